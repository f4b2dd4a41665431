"""The search engine behind the service: plain, blocking Python over one encoder and one store.

The gRPC servicer is a thin shell around this class; everything here is testable without a
socket. Methods raise RequestError subclasses for bad input, with messages naming the field.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from encoders.encoder import Encoder
from encoders.errors import EncoderError, MediaDecodeError
from encoders.media import decode_image
from encoders.modality import Modality
from indexer.filters import FilterError, FilterSpec, Match, MatchAny, validate
from indexer.items import ItemIndexer, ItemInput, ItemOutcome
from indexer.schema import StoredPoint, StoreInfo
from indexer.store import VectorStore, matching_ids
from server.config import ServerConfig
from server.errors import InvalidArgument, NotFound


@dataclass(frozen=True)
class QueryInput:
    """One query input: exactly one of text, image / audio / video bytes, or a stored point id."""

    text: str | None = None
    image: bytes | None = None
    id: str | None = None
    audio: bytes | None = None
    video: bytes | None = None


@dataclass(frozen=True)
class EncodedQuery:
    vector: np.ndarray
    modality: Modality
    exclude_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class SearchParams:
    top_k: int
    modalities: tuple[Modality, ...] = ()
    filter: FilterSpec | None = None
    score_threshold: float | None = None
    group_size: int = 1  # hits per media (media_id); top_k counts media


MAX_GROUP_SIZE = 100
MAX_CANDIDATES = 10_000


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def group_by_media(hits: Sequence[StoredPoint], top_k: int, group_size: int) -> list[list[StoredPoint]]:
    """The best `top_k` media, each with up to `group_size` hits, best first. Qdrant's own
    grouping cannot merge our two scoring branches (dense and frame re-scoring), so this runs here."""
    groups: dict[str, list[StoredPoint]] = {}
    for h in sorted(hits, key=lambda h: h.score, reverse=True):
        key = str(h.payload.get("media_id") or h.id)
        group = groups.get(key)
        if group is None:
            if len(groups) >= top_k:
                continue
            groups[key] = group = []
        if len(group) < group_size:
            group.append(h)
    return list(groups.values())


class SearchEngine:
    def __init__(self, encoder: Encoder, store: VectorStore, config: ServerConfig) -> None:
        self.encoder = encoder
        self.store = store
        self.config = config
        self.indexer = ItemIndexer(encoder, store)
        self._dirty = threading.Event()

    @property
    def bundle_id(self) -> str:
        return self.encoder.bundle.bundle_id

    # -- queries --------------------------------------------------------------------------

    def encode_query(self, q: QueryInput, *, field: str = "query") -> EncodedQuery:
        if q.text is not None:
            if not q.text.strip():
                raise InvalidArgument(f"{field}.text is empty")
            return EncodedQuery(self._embed_query_text(q.text), Modality.TEXT)
        if q.image is not None:
            try:
                image = decode_image(q.image, name=f"{field}.image")
            except MediaDecodeError as exc:
                raise InvalidArgument(str(exc)) from exc
            return EncodedQuery(self.encoder.embed_images([image])[0], Modality.IMAGE)
        if q.audio is not None:
            try:
                self.encoder.require_audio()
                audio = self.indexer.decoder.audio(q.audio, name=f"{field}.audio")
            except (MediaDecodeError, EncoderError) as exc:
                raise InvalidArgument(str(exc)) from exc
            return EncodedQuery(self.encoder.embed_audio(audio.samples).pooled, Modality.AUDIO)
        if q.video is not None:
            try:
                video = self.indexer.decoder.video(q.video, name=f"{field}.video")
            except MediaDecodeError as exc:
                raise InvalidArgument(str(exc)) from exc
            frames = self.encoder.embed_frames(video.frames)
            return EncodedQuery(_unit(frames.mean(axis=0)), Modality.VIDEO)
        if q.id is not None:
            point = self._get_one(q.id, field=f"{field}.id")
            if point.vector is None:
                raise NotFound(f"{field}.id: point {q.id} has no stored vector")
            return EncodedQuery(point.vector, Modality(point.payload.get("modality", "text")), (point.id,))
        raise InvalidArgument(f"{field} is empty: set text, image, audio, video or id")

    def _embed_query_text(self, text: str) -> np.ndarray:
        # A query longer than the text context is the mean of its chunks, not a silent truncation.
        chunks = self.encoder.chunk(text)
        vectors = self.encoder.embed_texts([c.text for c in chunks])
        mean = vectors.mean(axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)

    def search(self, query: QueryInput, params: SearchParams) -> tuple[EncodedQuery, list[StoredPoint]]:
        """Validate the parameters (before spending time on encoding), encode, query, group."""
        spec = self._search_filter(params)
        encoded = self.encode_query(query)
        wants_video = not params.modalities or Modality.VIDEO in params.modalities
        limit = params.top_k * params.group_size * 3 + 10
        for _ in range(4):  # widen the candidate pool until top_k media are filled or none are left
            hits = self._candidates(encoded, spec, params.score_threshold, limit, wants_video)
            groups = group_by_media(hits, params.top_k, params.group_size)
            if len(groups) >= params.top_k or len(hits) < limit or limit >= MAX_CANDIDATES:
                break
            limit = min(limit * 4, MAX_CANDIDATES)
        return encoded, [h for g in groups for h in g]

    def _candidates(
        self, q: EncodedQuery, spec: FilterSpec, threshold: float | None, limit: int, wants_video: bool
    ) -> list[StoredPoint]:
        hits = self.store.query(
            q.vector, limit=limit, filter=spec, score_threshold=threshold, exclude_ids=q.exclude_ids
        )
        if not wants_video:
            return hits
        # Video segments are re-scored by MAX_SIM over their frames, so a query that matches one
        # frame finds its segment even when the segment's mean vector lies elsewhere.
        segments = spec.and_(FilterSpec(must=(Match("modality", "video"), Match("track", "visual"))))
        rescored = self.store.query(
            q.vector,
            limit=limit,
            filter=segments,
            score_threshold=threshold,
            exclude_ids=q.exclude_ids,
            frames_prefetch=max(4 * limit, 200),
        )
        best = {h.id: h for h in hits}
        for h in rescored:
            if h.id not in best or h.score > best[h.id].score:
                best[h.id] = h
        return sorted(best.values(), key=lambda h: h.score, reverse=True)

    def _search_filter(self, params: SearchParams) -> FilterSpec:
        if not 1 <= params.top_k <= self.config.max_top_k:
            raise InvalidArgument(f"top_k must be between 1 and {self.config.max_top_k}, got {params.top_k}")
        if not 1 <= params.group_size <= MAX_GROUP_SIZE:
            raise InvalidArgument(
                f"group_size must be between 1 and {MAX_GROUP_SIZE}, got {params.group_size}"
            )
        if params.score_threshold is not None and not math.isfinite(params.score_threshold):
            raise InvalidArgument("score_threshold must be a finite number")
        spec = FilterSpec()
        if params.filter is not None:
            try:
                spec = validate(params.filter)
            except FilterError as exc:
                raise InvalidArgument(str(exc)) from exc
        if params.modalities:
            spec = spec.and_(
                FilterSpec(must=(MatchAny("modality", tuple(m.value for m in params.modalities)),))
            )
        return spec

    def embed(self, inputs: Sequence[QueryInput]) -> list[EncodedQuery]:
        if not inputs:
            raise InvalidArgument("inputs is empty")
        if len(inputs) > self.config.max_batch_items:
            raise InvalidArgument(f"inputs has {len(inputs)} entries; at most {self.config.max_batch_items}")
        return [self.encode_query(q, field=f"inputs[{i}]") for i, q in enumerate(inputs)]

    # -- writes ---------------------------------------------------------------------------

    def upsert(self, items: Sequence[ItemInput]) -> list[ItemOutcome]:
        if not items:
            raise InvalidArgument("items is empty")
        if len(items) > self.config.max_batch_items:
            raise InvalidArgument(
                f"items has {len(items)} entries; at most {self.config.max_batch_items} per request"
            )
        outcomes = self.indexer.index(items)
        if any(o.error is None and not o.unchanged for o in outcomes):
            self._dirty.set()
        return outcomes

    def delete(self, ids: Sequence[str]) -> int:
        resolved = self.resolve_ids(ids, field="ids")
        self.store.delete(resolved)
        return len(resolved)

    def get(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[StoredPoint]:
        resolved = self.resolve_ids(ids, field="ids")
        by_id = {p.id: p for p in self.store.get(resolved, with_vectors=with_vectors)}
        return [by_id[i] for i in resolved if i in by_id]

    def stats(self) -> StoreInfo:
        return self.store.info()

    def close(self) -> None:
        self.indexer.close()
        self.store.close()

    def optimize_if_dirty(self) -> bool:
        """Build pending indexes after writes; returns whether it ran."""
        if not self._dirty.is_set():
            return False
        self._dirty.clear()
        self.store.optimize()
        return True

    # -- ids ------------------------------------------------------------------------------

    def resolve_ids(self, raw: Sequence[str], *, field: str) -> list[str]:
        """Point ids for the given point ids or caller ids. Raises NotFound naming unknown ones."""
        if not raw:
            raise InvalidArgument(f"{field} is empty")
        if len(raw) > self.config.max_batch_items * 4:
            raise InvalidArgument(
                f"{field} has {len(raw)} entries; at most {self.config.max_batch_items * 4}"
            )
        canonical: dict[str, str] = {}
        for r in raw:
            try:
                canonical[r] = str(uuid.UUID(r))
            except ValueError:
                continue
        found = {p.id for p in self.store.get(list(set(canonical.values())))}
        out: list[str] = []
        missing: list[str] = []
        for r in dict.fromkeys(raw):
            if r in canonical and canonical[r] in found:
                out.append(canonical[r])
                continue
            by_external = matching_ids(self.store, FilterSpec(must=(Match("external_id", r),)))
            if by_external:
                out.extend(by_external)
            else:
                missing.append(r)
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise NotFound(f"{field}: no stored point has id {shown}")
        return list(dict.fromkeys(out))

    def _get_one(self, raw: str, *, field: str) -> StoredPoint:
        ids = self.resolve_ids([raw], field=field)
        points = self.store.get(ids[:1], with_vectors=True)
        if not points:
            raise NotFound(f"{field}: no stored point has id {raw}")
        return points[0]

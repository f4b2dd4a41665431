"""The search engine behind the service: plain, blocking Python over one encoder and one store.

The gRPC servicer is a thin shell around this class; everything here is testable without a
socket. Methods raise RequestError subclasses for bad input, with messages naming the field.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from encoders.encoder import Encoder
from encoders.errors import EncoderError, MediaDecodeError
from encoders.media import decode_image
from encoders.modality import Modality
from encoders.vectors import mean_unit
from indexer.filters import FilterSpec, Match, payload_key
from indexer.inputs import ItemInput, ItemOutcome
from indexer.items import ItemIndexer
from indexer.mining import MiningParams, mine_hard_negatives
from indexer.schema import StoredPoint, StoreInfo
from indexer.store import VectorStore, matching_ids
from server import planner
from server.config import ServerConfig
from server.errors import InvalidArgument, NotFound
from server.query_types import MultiQuery, QueryInput
from server.planner import Plan, SearchOutcome, SearchParams, Weighted


@dataclass(frozen=True)
class EncodedQuery:
    vector: np.ndarray
    modality: Modality
    exclude_ids: tuple[str, ...] = ()


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
            return EncodedQuery(mean_unit(frames), Modality.VIDEO)
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
        return mean_unit(vectors)

    def search(self, query: QueryInput | MultiQuery, params: SearchParams) -> SearchOutcome:
        """Validate the parameters (before spending time on encoding), encode, run the pipeline."""
        spec = planner.check_params(params, self.config.max_top_k)
        start = time.perf_counter()
        plan = self._plan(query, params)
        encode_ms = (time.perf_counter() - start) * 1e3
        outcome = planner.run(self.store, plan, params, spec, self.encoder.bundle.calibration)
        outcome.stage_ms["encode"] = encode_ms
        return outcome

    def _plan(self, query: QueryInput | MultiQuery, params: SearchParams) -> Plan:
        single = isinstance(query, QueryInput)
        multi = MultiQuery(((query, 1.0),)) if isinstance(query, QueryInput) else query
        if not multi.positives:
            what = "a negative-only query has nothing to rank by" if multi.negatives else "no query input"
            raise InvalidArgument(f"positives is empty: give query or at least one positive ({what})")
        if multi.negatives and params.fusion == "rrf":
            raise InvalidArgument("negatives cannot be combined with fusion RRF: use the default fusion")
        positives: list[Weighted] = []
        exclude: list[str] = []
        for i, (q, w) in enumerate(multi.positives):
            where = "query" if single else f"positives[{i}]"
            weight = planner.check_weight(w, where)
            enc = self.encode_query(q, field=where if single else f"{where}.input")
            positives.append(Weighted(enc.vector, enc.modality, weight))
            exclude += enc.exclude_ids
        negatives = []
        for i, (q, w) in enumerate(multi.negatives):
            planner.check_weight(w, f"negatives[{i}]")
            enc = self.encode_query(q, field=f"negatives[{i}].input")
            negatives.append(enc.vector)
            exclude += enc.exclude_ids
        return Plan(positives, negatives, tuple(dict.fromkeys(exclude)))

    def recommend(
        self, positive_ids: Sequence[str], negative_ids: Sequence[str], params: SearchParams
    ) -> SearchOutcome:
        """Like the positive stored points, unlike the negative ones (ids or caller ids)."""
        if not positive_ids:
            raise InvalidArgument("positive_ids is empty: recommend needs at least one positive")
        query = MultiQuery(
            tuple((QueryInput(id=i), 1.0) for i in positive_ids),
            tuple((QueryInput(id=i), 1.0) for i in negative_ids),
        )
        return self.search(query, params)

    def mine(
        self,
        anchors: Sequence[QueryInput],
        positive_ids: Sequence[str],
        *,
        k: int,
        modalities: tuple[Modality, ...] = (),
        filter: FilterSpec | None = None,
        group_key: str = "",
        group: str = "",
        max_fraction_of_positive: float = 0.95,
        near_duplicate: float = 0.98,
    ) -> tuple[list[StoredPoint], float | None]:
        """Hard negatives for the anchors (query inputs, else the positives' own vectors)."""
        if not 1 <= k <= self.config.max_top_k:
            raise InvalidArgument(f"k must be between 1 and {self.config.max_top_k}, got {k}")
        for name, value in (
            ("max_fraction_of_positive", max_fraction_of_positive),
            ("near_duplicate", near_duplicate),
        ):
            if not (math.isfinite(value) and 0 < value <= 1):
                raise InvalidArgument(f"{name} must be in (0, 1], got {value}")
        if not anchors and not positive_ids:
            raise InvalidArgument("give queries or positive_ids: mining needs an anchor")
        spec = planner.check_params(
            SearchParams(top_k=k, modalities=modalities, filter=filter), self.config.max_top_k
        )
        positives = (
            self.store.get(self.resolve_ids(positive_ids, field="positive_ids"), with_vectors=True)
            if positive_ids
            else []
        )
        vectors = [self.encode_query(q, field=f"queries[{i}]").vector for i, q in enumerate(anchors)]
        vectors = vectors or [p.vector for p in positives if p.vector is not None]
        key = payload_key(group_key) if group_key else None
        if key and not group and positives:
            values = {str(_get_path(p.payload, key)) for p in positives}
            group = values.pop() if len(values) == 1 else ""
        best = None
        if positives:
            best = max(float(v @ p.vector) for v in vectors for p in positives if p.vector is not None)
        params = MiningParams(
            k=k,
            max_fraction_of_positive=max_fraction_of_positive,
            near_duplicate=near_duplicate,
            group_key=key,
        )
        found: dict[str, StoredPoint] = {}
        for v in vectors:
            for h in mine_hard_negatives(
                self.store,
                v,
                params=params,
                positive_score=best,
                group=group or None,
                filter=spec,
                exclude_ids=[p.id for p in positives],
                exclude_content_hashes=[str(p.payload.get("content_hash")) for p in positives],
            ):
                if h.id not in found or h.score > found[h.id].score:
                    found[h.id] = h
        return sorted(found.values(), key=lambda h: h.score, reverse=True)[:k], best

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


def _get_path(payload: dict[str, object], key: str) -> object:
    value: object = payload
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value

"""Turning items (text, image, audio or video) into stored points: decode, chunk, embed, write.

Each item succeeds or fails on its own: a corrupt file is reported in its outcome and the rest
of the batch is still written. An item whose points already exist for the same content is not
decoded or embedded again, so re-ingesting a library costs one lookup per file. Audio and video
decode in a separate worker process with a time limit (see encoders.decode).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from encoders.decode import DecodedAudio, DecodedVideo, MediaDecoder
from encoders.encoder import Encoder
from encoders.errors import EncoderError, MediaDecodeError
from encoders.media import decode_image
from encoders.modality import Modality
from indexer.filters import FilterSpec, Match
from indexer.inputs import ItemInput, ItemOutcome
from indexer.media_points import POOLED, VideoLayout, audio_points, video_points
from indexer.schema import PointRecord, point_id
from indexer.store import VectorStore, matching_ids

# Client-supplied file attributes kept in the payload; anything else is ignored.
ATTRIBUTE_KEYS = ("size", "mtime")
_COMPARED = ("content_hash", "bundle_id", "source", "meta")


@dataclass
class _Work:
    index: int
    item: ItemInput
    key: str
    base: dict[str, Any]
    sentinel: str  # the point whose presence means this media is fully indexed
    records: list[PointRecord] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # text chunks waiting for one batched pass
    image: Image.Image | None = None  # a decoded image waiting for one batched pass
    media: DecodedAudio | DecodedVideo | None = None


class ItemIndexer:
    """Writes items into one store with one encoder."""

    def __init__(
        self,
        encoder: Encoder,
        store: VectorStore,
        *,
        decoder: MediaDecoder | None = None,
        video_layout: VideoLayout | None = None,
    ) -> None:
        if encoder.bundle.bundle_id != store.schema.bundle_id:
            raise ValueError("encoder and store belong to different bundles")
        self.encoder = encoder
        self.store = store
        rate = encoder.audio_sample_rate if encoder.has_audio else 16_000
        self.decoder = decoder or MediaDecoder(sample_rate=rate)
        self.video_layout = video_layout or VideoLayout()

    def close(self) -> None:
        self.decoder.close()

    def index(self, items: Sequence[ItemInput]) -> list[ItemOutcome]:
        outcomes = [ItemOutcome() for _ in items]
        work: list[_Work] = []
        for i, item in enumerate(items):
            try:
                work.append(self._identify(i, item))
            except (MediaDecodeError, OSError) as exc:
                outcomes[i].error = _reason(exc, item)
        existing = {p.id: p for p in self.store.get([w.sentinel for w in work])}
        todo = []
        for w in work:
            outcomes[w.index].media_id = w.base["media_id"]
            stored = existing.get(w.sentinel)
            if stored is not None and all(stored.payload.get(k) == w.base[k] for k in _COMPARED):
                outcomes[w.index].unchanged = True
                outcomes[w.index].ids = list(stored.payload.get("point_ids", [w.sentinel]))
            else:
                todo.append(w)
        self._decode(todo, outcomes)
        for w in todo:
            if outcomes[w.index].error is not None:
                continue
            try:
                outcomes[w.index].note = self._build(w)
            except (MediaDecodeError, EncoderError) as exc:
                outcomes[w.index].error = _reason(exc, w.item)
        self._embed_batched([w for w in todo if w.texts], [w for w in todo if w.image is not None])
        built = [w for w in todo if outcomes[w.index].error is None]
        for w in built:
            ids = [r.id for r in w.records]
            # The sentinel records every point of the media, so an unchanged re-ingest needs no scan.
            next(r for r in w.records if r.id == w.sentinel).payload["point_ids"] = ids
            outcomes[w.index].ids = ids
        self._drop_stale([w for w in built if w.sentinel in existing])
        self.store.upsert([r for w in built for r in w.records])
        return outcomes

    # -- steps ----------------------------------------------------------------------------

    def _identify(self, index: int, item: ItemInput) -> _Work:
        name = item.source or f"item {index}"
        digest = _check_and_hash(item, name)
        key = f"id:{item.id}" if item.id else f"sha256:{digest}"
        base: dict[str, Any] = {
            "modality": item.modality.value,
            "source": item.source,
            "content_hash": digest,
            "media_id": point_id(key, -1),
            "bundle_id": self.encoder.bundle.bundle_id,
            "meta": dict(item.metadata),
        }
        if item.id:
            base["external_id"] = item.id
        for k in ATTRIBUTE_KEYS:
            v = item.attributes.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                base[k] = v
        timed = item.modality in (Modality.AUDIO, Modality.VIDEO)
        return _Work(index, item, key, base, sentinel=point_id(key, POOLED if timed else 0))

    def _decode(self, todo: list[_Work], outcomes: list[ItemOutcome]) -> None:
        """Decode images here and audio / video in the decoder's worker processes, in parallel."""

        def decode(w: _Work) -> None:
            name, data, m = w.item.source or f"item {w.index}", w.item.data, w.item.modality
            if isinstance(data, str):
                return  # text: nothing to decode
            try:
                if m == Modality.IMAGE:
                    w.image = decode_image(data.read_bytes() if isinstance(data, Path) else data, name=name)
                elif m == Modality.AUDIO:
                    self.encoder.require_audio()  # no tower, no point in decoding
                    w.media = self.decoder.audio(data, name=name)
                else:
                    w.media = self.decoder.video(data, name=name)
            except (MediaDecodeError, EncoderError, OSError) as exc:
                outcomes[w.index].error = _reason(exc, w.item)

        with ThreadPoolExecutor(max_workers=self.decoder.workers) as pool:
            list(pool.map(decode, todo))

    def _build(self, w: _Work) -> str | None:
        """The item's point records; text and image vectors are filled in by _embed_batched."""
        if isinstance(w.item.data, str):
            chunks = self.encoder.chunk(w.item.data)
            for c in chunks:
                extra = {"segment": c.index, "segments": len(chunks), "text": c.text, "char_start": c.start}
                payload = {**w.base, **extra, "char_end": c.end}
                w.records.append(PointRecord(point_id(w.key, c.index), _EMPTY, payload))
                w.texts.append(c.text)
            return None
        if w.image is not None:
            payload = {
                **w.base,
                "segment": 0,
                "segments": 1,
                "width": w.image.size[0],
                "height": w.image.size[1],
            }
            w.records.append(PointRecord(point_id(w.key, 0), _EMPTY, payload))
            return None
        if isinstance(w.media, DecodedAudio):
            w.records = audio_points(w.key, w.base, w.media, self.encoder)
            return None
        if isinstance(w.media, DecodedVideo):
            w.records, note = video_points(w.key, w.base, w.media, self.encoder, self.video_layout)
            return note
        raise MediaDecodeError(f"{w.item.source or 'item'}: nothing was decoded")

    def _embed_batched(self, texts: list[_Work], images: list[_Work]) -> None:
        # One encoder pass over every chunk of every text, and one over every image, in the batch.
        if texts:
            vectors = self.encoder.embed_texts([t for w in texts for t in w.texts])
            flat = [r for w in texts for r in w.records]
            for r, v in zip(flat, vectors, strict=True):
                r.vector = v
        if images:
            vectors = self.encoder.embed_images([w.image for w in images if w.image is not None])
            for w, v in zip(images, vectors, strict=True):
                w.records[0].vector = v
                w.image = None  # free the pixels before the write

    def _drop_stale(self, work: list[_Work]) -> None:
        # Media re-written under the same key (a caller id reused for other content) may leave
        # points the new version does not have, e.g. the tail chunks of a longer text.
        for w in work:
            keep = {r.id for r in w.records}
            current = matching_ids(self.store, FilterSpec(must=(Match("media_id", w.base["media_id"]),)))
            self.store.delete([i for i in current if i not in keep])


_EMPTY = np.zeros(0, dtype=np.float32)  # a text chunk's vector until the batched text pass


def _check_and_hash(item: ItemInput, name: str) -> str:
    data, m = item.data, item.modality
    if m == Modality.TEXT:
        if not isinstance(data, str):
            raise MediaDecodeError(f"{name}: text item carries bytes, expected a string")
        if not data.strip():
            raise MediaDecodeError(f"{name}: text is empty")
        return hashlib.sha256(data.encode("utf-8")).hexdigest()
    if isinstance(data, str):
        raise MediaDecodeError(f"{name}: {m} item carries text, expected encoded {m} bytes")
    if m not in (Modality.IMAGE, Modality.AUDIO, Modality.VIDEO):
        raise MediaDecodeError(f"{name}: unsupported modality {m}")
    h = hashlib.sha256()
    if isinstance(data, Path):
        with data.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        empty = data.stat().st_size == 0
    else:
        h.update(data)
        empty = not data
    if empty:
        raise MediaDecodeError(f"{name}: empty {m} file")
    return h.hexdigest()


def _reason(exc: Exception, item: ItemInput) -> str:
    if isinstance(exc, OSError):
        return f"{item.source or 'item'}: cannot read file: {exc.strerror or exc}"
    return str(exc)

"""Turning items (image bytes or text) into stored points: decode, chunk, embed, write.

Each item succeeds or fails on its own: a corrupt image is reported in its outcome and the rest
of the batch is still written. Items whose points already exist with the same content are not
re-embedded, so re-ingesting a library costs one lookup per file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from encoders.encoder import Encoder
from encoders.errors import MediaDecodeError
from encoders.media import decode_image
from encoders.modality import Modality
from indexer.filters import FilterSpec, Match
from indexer.schema import PointRecord, StoredPoint, content_hash, point_id
from indexer.store import VectorStore, matching_ids

# Client-supplied file attributes kept in the payload; anything else is ignored.
ATTRIBUTE_KEYS = ("size", "mtime")


@dataclass(frozen=True)
class ItemInput:
    modality: Modality
    data: bytes | str  # encoded image bytes, or text
    source: str = ""
    id: str | None = None  # caller id; default is the content hash
    metadata: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class ItemOutcome:
    ids: list[str] = field(default_factory=list)
    media_id: str = ""
    unchanged: bool = False
    error: str | None = None


@dataclass
class _Prepared:
    index: int
    item: ItemInput
    key: str
    payloads: list[dict[str, Any]]  # one per point (segment)
    ids: list[str]
    image: Image.Image | None = None
    texts: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = None  # one row per point, filled by _embed


class ItemIndexer:
    """Writes items into one store with one encoder."""

    def __init__(self, encoder: Encoder, store: VectorStore) -> None:
        if encoder.bundle.bundle_id != store.schema.bundle_id:
            raise ValueError("encoder and store belong to different bundles")
        self.encoder = encoder
        self.store = store

    def index(self, items: Sequence[ItemInput]) -> list[ItemOutcome]:
        outcomes = [ItemOutcome() for _ in items]
        prepared: list[_Prepared] = []
        for i, item in enumerate(items):
            try:
                prepared.append(self._prepare(i, item))
            except MediaDecodeError as exc:
                outcomes[i].error = str(exc)
        todo = self._drop_unchanged(prepared, outcomes)
        self._decode_images(todo, outcomes)
        todo = [p for p in todo if outcomes[p.index].error is None]
        records = self._embed(todo)
        self._replace_stale_segments(todo)
        self.store.upsert(records)
        return outcomes

    # -- steps ----------------------------------------------------------------------------

    def _prepare(self, index: int, item: ItemInput) -> _Prepared:
        name = item.source or f"item {index}"
        if item.modality == Modality.TEXT:
            if not isinstance(item.data, str):
                raise MediaDecodeError(f"{name}: text item carries bytes, expected a string")
            if not item.data.strip():
                raise MediaDecodeError(f"{name}: text is empty")
            raw = item.data.encode("utf-8")
        elif item.modality == Modality.IMAGE:
            if not isinstance(item.data, bytes):
                raise MediaDecodeError(f"{name}: image item carries text, expected encoded image bytes")
            if not item.data:
                raise MediaDecodeError(f"{name}: empty image bytes")
            raw = item.data
        else:
            raise MediaDecodeError(f"{name}: modality {item.modality} is not supported by this server yet")
        digest = content_hash(raw)
        key = f"id:{item.id}" if item.id else f"sha256:{digest}"
        media_id = point_id(key, -1)
        base: dict[str, Any] = {
            "modality": item.modality.value,
            "source": item.source,
            "content_hash": digest,
            "media_id": media_id,
            "bundle_id": self.encoder.bundle.bundle_id,
            "meta": dict(item.metadata),
        }
        if item.id:
            base["external_id"] = item.id
        for k in ATTRIBUTE_KEYS:
            v = item.attributes.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                base[k] = v
        prepared = _Prepared(index=index, item=item, key=key, payloads=[], ids=[])
        if item.modality == Modality.TEXT:
            assert isinstance(item.data, str)
            chunks = self.encoder.chunk(item.data)
            for c in chunks:
                prepared.payloads.append(
                    {
                        **base,
                        "segment": c.index,
                        "segments": len(chunks),
                        "text": c.text,
                        "char_start": c.start,
                        "char_end": c.end,
                    }
                )
                prepared.texts.append(c.text)
        else:
            prepared.payloads.append({**base, "segment": 0, "segments": 1})
        prepared.ids = [point_id(key, p["segment"]) for p in prepared.payloads]
        return prepared

    def _drop_unchanged(self, prepared: list[_Prepared], outcomes: list[ItemOutcome]) -> list[_Prepared]:
        for p in prepared:
            outcomes[p.index].ids = p.ids
            outcomes[p.index].media_id = p.payloads[0]["media_id"]
        existing = {s.id: s for s in self.store.get([i for p in prepared for i in p.ids])}
        todo = []
        for p in prepared:
            if all(
                _same_point(existing.get(i), payload) for i, payload in zip(p.ids, p.payloads, strict=True)
            ):
                outcomes[p.index].unchanged = True
            else:
                todo.append(p)
        return todo

    def _decode_images(self, todo: list[_Prepared], outcomes: list[ItemOutcome]) -> None:
        for p in todo:
            if p.item.modality != Modality.IMAGE:
                continue
            assert isinstance(p.item.data, bytes)
            try:
                p.image = decode_image(p.item.data, name=p.item.source or f"item {p.index}")
            except MediaDecodeError as exc:
                outcomes[p.index].error = str(exc)
                outcomes[p.index].ids = []
                continue
            p.payloads[0]["width"], p.payloads[0]["height"] = p.image.size

    def _embed(self, todo: list[_Prepared]) -> list[PointRecord]:
        images = [p for p in todo if p.image is not None]
        if images:
            vectors = self.encoder.embed_images([p.image for p in images if p.image is not None])
            for p, v in zip(images, vectors, strict=True):
                p.vectors = v[None, :]
        texts = [p for p in todo if p.texts]
        if texts:
            # One encoder pass over every chunk of every text in the batch.
            flat = self.encoder.embed_texts([t for p in texts for t in p.texts])
            start = 0
            for p in texts:
                p.vectors = flat[start : start + len(p.texts)]
                start += len(p.texts)
        return [
            PointRecord(id=i, vector=vec, payload=payload)
            for p in todo
            if p.vectors is not None
            for i, payload, vec in zip(p.ids, p.payloads, p.vectors, strict=True)
        ]

    def _replace_stale_segments(self, todo: list[_Prepared]) -> None:
        # A caller id re-used for shorter content would otherwise keep its old tail chunks.
        for p in todo:
            if not p.item.id:
                continue
            keep = set(p.ids)
            current = matching_ids(self.store, FilterSpec(must=(Match("external_id", p.item.id),)))
            stale = [i for i in current if i not in keep]
            self.store.delete(stale)


def _same_point(stored: StoredPoint | None, payload: dict[str, Any]) -> bool:
    if stored is None:
        return False
    return all(
        stored.payload.get(k) == payload[k]
        for k in ("content_hash", "bundle_id", "source", "meta", "segments")
    )

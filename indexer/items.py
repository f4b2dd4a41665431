"""Turning items (text, image, audio or video) into stored points: hash, embed, write.

Each item succeeds or fails on its own: a corrupt file is reported in its outcome and the rest
of the batch is still written. An item whose points already exist for the same content is not
decoded or embedded again, so re-ingesting a library costs one lookup per file. Decoding and
embedding go through the one embedding path (encoders.embed).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from encoders.embed import Check, Embedder, Failure, TimeLeft
from encoders.errors import MediaDecodeError
from encoders.inputs import EmbedInput, input_for
from encoders.modality import Modality
from indexer.filters import FilterSpec, Match
from indexer.inputs import ItemInput, ItemOutcome
from indexer.media_points import item_points, sentinel_segment
from indexer.schema import (
    DEFAULT_NAMESPACE,
    Key,
    PointPayload,
    PointRecord,
    point_id,
)
from indexer.store import VectorStore, matching_ids


@dataclass
class _Work:
    index: int
    item: ItemInput
    input: EmbedInput
    key: str
    base: PointPayload
    sentinel: str  # the point whose presence means this media is fully indexed
    records: list[PointRecord] = field(default_factory=list)


class ItemIndexer:
    """Writes items into one store with one embedder, within one id namespace."""

    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        max_payload_bytes: int | None = None,
    ) -> None:
        if embedder.encoder.bundle.bundle_id != store.schema.bundle_id:
            raise ValueError("encoder and store belong to different bundles")
        self.embedder = embedder
        self.store = store
        self.namespace = namespace
        self.max_payload_bytes = max_payload_bytes

    @property
    def bundle_id(self) -> str:
        return self.embedder.encoder.bundle.bundle_id

    def index(
        self, items: Sequence[ItemInput], *, check: Check | None = None, time_left: TimeLeft | None = None
    ) -> list[ItemOutcome]:
        outcomes = [ItemOutcome() for _ in items]
        work: list[_Work] = []
        for i, item in enumerate(items):
            try:
                work.append(self._identify(i, item))
            except (MediaDecodeError, TypeError, OSError) as exc:
                outcomes[i].error = _reason(exc, item)
        existing = {p.id: p for p in self.store.get([w.sentinel for w in work])}
        todo = []
        for w in work:
            outcomes[w.index].media_id = w.base.media_id
            stored = existing.get(w.sentinel)
            if stored is not None and _same_content(PointPayload.from_dict(stored.payload), w.base):
                outcomes[w.index].unchanged = True
                outcomes[w.index].ids = list(stored.payload.get(Key.POINT_IDS, [w.sentinel]))
            else:
                todo.append(w)
        embedded = self.embedder.embed([w.input for w in todo], check=check, time_left=time_left)
        built: list[_Work] = []
        for w, emb in zip(todo, embedded, strict=True):
            if isinstance(emb, Failure):
                outcomes[w.index].error = emb.error
                continue
            w.records, outcomes[w.index].note = item_points(w.key, w.base, emb, self.namespace)
            if (error := self._payload_too_large(w)) is not None:
                outcomes[w.index].error = error
                continue
            ids = [r.id for r in w.records]
            # The sentinel records every point of the media, so an unchanged re-ingest needs no scan.
            next(r for r in w.records if r.id == w.sentinel).payload[Key.POINT_IDS] = ids
            outcomes[w.index].ids = ids
            built.append(w)
        if check is not None:
            check()  # the last moment to give up without a partial write
        self._drop_stale([w for w in built if w.sentinel in existing])
        self.store.upsert([r for w in built for r in w.records])
        return outcomes

    def _identify(self, index: int, item: ItemInput) -> _Work:
        name = item.source or f"item {index}"
        embed_input = input_for(item.modality, item.data, name)
        digest = _check_and_hash(item, name)
        key = f"id:{item.id}" if item.id else f"sha256:{digest}"
        base = PointPayload(
            modality=item.modality.value,
            source=item.source,
            content_hash=digest,
            media_id=point_id(key, -1, self.namespace),
            bundle_id=self.bundle_id,
            meta=dict(item.metadata),
            tenant=None if self.namespace == DEFAULT_NAMESPACE else self.namespace,
            external_id=item.id or None,
            size=_attribute(item, Key.SIZE),
            mtime=_attribute(item, Key.MTIME),
        )
        timed = item.modality in (Modality.AUDIO, Modality.VIDEO)
        sentinel = point_id(key, sentinel_segment(timed), self.namespace)
        return _Work(index, item, embed_input, key, base, sentinel)

    def _payload_too_large(self, w: _Work) -> str | None:
        # The metadata is repeated on every point (every chunk of a long text): bound the product.
        if self.max_payload_bytes is None:
            return None
        meta = len(json.dumps(w.base.meta))
        total = meta * len(w.records)
        if total <= self.max_payload_bytes:
            return None
        return (
            f"{w.item.source or f'item {w.index}'}: its {meta}-byte metadata is stored on each of its "
            f"{len(w.records)} points, {total} bytes in all; at most {self.max_payload_bytes} "
            "(max_item_payload_bytes): shorten the text or the metadata"
        )

    def _drop_stale(self, work: list[_Work]) -> None:
        # Media re-written under the same key (a caller id reused for other content) may leave
        # points the new version does not have, e.g. the tail chunks of a longer text.
        for w in work:
            keep = {r.id for r in w.records}
            current = matching_ids(self.store, FilterSpec(must=(Match(Key.MEDIA_ID, w.base.media_id),)))
            self.store.delete([i for i in current if i not in keep])


def _same_content(stored: PointPayload, new: PointPayload) -> bool:
    return (stored.content_hash, stored.bundle_id, stored.source, stored.meta) == (
        new.content_hash,
        new.bundle_id,
        new.source,
        new.meta,
    )


def _attribute(item: ItemInput, key: Key) -> float | None:
    """A client-supplied file attribute kept in the payload, when it is a finite number."""
    v = item.attributes.get(key)
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return v
    return None


def _check_and_hash(item: ItemInput, name: str) -> str:
    data, m = item.data, item.modality
    if m == Modality.TEXT:
        if not isinstance(data, str) or not data.strip():
            raise MediaDecodeError(f"{name}: text is empty")
        return hashlib.sha256(data.encode("utf-8")).hexdigest()
    h = hashlib.sha256()
    if isinstance(data, Path):
        with data.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        empty = data.stat().st_size == 0
    else:
        h.update(data if isinstance(data, bytes) else b"")
        empty = not data
    if empty:
        raise MediaDecodeError(f"{name}: empty {m} file")
    return h.hexdigest()


def _reason(exc: Exception, item: ItemInput) -> str:
    if isinstance(exc, OSError):
        return f"{item.source or 'item'}: cannot read file: {exc.strerror or exc}"
    return str(exc)

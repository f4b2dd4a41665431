"""What a reindex reads back: every stored item, and the source it can be rebuilt from.

An item is found by its sentinel point (the one that lists every point of the item, written
last): scrolling the sentinels gives one record per item with its payload, without holding the
collection in memory. A text item is rebuilt from its stored chunks (each chunk is an exact slice
of the text, with its character offsets); the whitespace between chunks that no chunk covers is
tried in a few likely forms and the result accepted only when its SHA-256 is the stored content
hash, so a rebuilt text is byte for byte the indexed one, with the same ids. Failing that, the
text's source file is read when it still holds that content. Images, audio and video are read
from their source paths. An item none of this can reproduce is `Unavailable`, with the reason.
Torch-free.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from encoders.modality import Modality
from indexer.filters import FilterSpec, IsEmpty
from indexer.schema import DEFAULT_NAMESPACE, Key, PointPayload, StoredPoint
from indexer.sources import SourceFile
from indexer.store import VectorStore

SENTINELS = FilterSpec(must_not=(IsEmpty(Key.POINT_IDS),))
PAGE = 256
# Whitespace runs tried where no chunk covers the text (between chunks, at the end).
_FILLS = (" ", "\n", "\t", "\r\n")
_TAILS = ("", "\n", "\r\n", " ", "\n\n", "  ", " \n", "\t")
_MAX_COMBINED_GAPS = 3  # beyond this, every gap gets the same fill (combinations explode)


@dataclass(frozen=True)
class StoredItem:
    """One indexed item, as its sentinel point records it."""

    id: str  # the sentinel's point id (the same under every bundle: ids are bundle-free)
    payload: PointPayload

    @classmethod
    def from_point(cls, p: StoredPoint) -> StoredItem:
        return cls(p.id, PointPayload.from_dict(p.payload))

    @property
    def namespace(self) -> str:
        return self.payload.tenant or DEFAULT_NAMESPACE

    @property
    def media_id(self) -> str:
        return self.payload.media_id

    @property
    def point_ids(self) -> tuple[str, ...]:
        return tuple(self.payload.point_ids or (self.id,))

    @property
    def fingerprint(self) -> tuple[str, str, str]:
        """What says two indexings hold the same item (indexer.ingest_work.same_content)."""
        p = self.payload
        return p.content_hash, p.source, json.dumps(p.meta, sort_keys=True, default=str)


@dataclass(frozen=True)
class Unavailable:
    """An item whose content cannot be read back: it cannot be in the new collection."""

    item: StoredItem
    reason: str


@dataclass(frozen=True)
class Rebuilt:
    source: SourceFile
    suspect: bool = False  # the file's size or mtime differ from the stored ones: maybe changed


def stored_items(
    store: VectorStore, *, filter: FilterSpec | None = None, page: int = PAGE
) -> Iterator[StoredItem]:
    """Every item of `store` (a tenant's store: that tenant's), page by page."""
    spec = SENTINELS if filter is None else SENTINELS.and_(filter)
    offset: str | None = None
    while True:
        points, offset = store.scroll(limit=page, offset=offset, filter=spec)
        for p in points:
            yield StoredItem.from_point(p)
        if offset is None:
            return


def rebuild(item: StoredItem, store: VectorStore) -> Rebuilt | Unavailable:
    """The source that reproduces `item` through the ingest pipeline, or why there is none."""
    p = item.payload
    if p.modality == Modality.TEXT:
        return _rebuild_text(item, store)
    if not p.source:
        return Unavailable(item, "no source file: it was written with its bytes (Upsert)")
    path = Path(p.source)
    if not path.is_absolute():
        return Unavailable(item, f"source {p.source[:200]!r} is not an absolute file path")
    try:
        src = SourceFile.from_path(
            path,
            modality=Modality(p.modality),
            source=p.source,
            metadata=p.meta,
            external_id=p.external_id,
        )
    except FileNotFoundError:
        return Unavailable(item, "source file is gone")
    except (OSError, ValueError) as exc:
        return Unavailable(item, f"source file cannot be read: {getattr(exc, 'strerror', None) or exc}")
    return Rebuilt(src, suspect=(p.size, p.mtime) != (src.size, src.mtime))


def _rebuild_text(item: StoredItem, store: VectorStore) -> Rebuilt | Unavailable:
    p = item.payload
    chunks = [c.payload for c in store.get(list(item.point_ids))]
    text = rebuild_text(chunks, p.content_hash)
    # A text indexed from a file keeps its size and mtime in the payload; the path is given only
    # so that they are kept (the pipeline reads `text`, never the path, when it is set).
    on_disk = p.size is not None and p.mtime is not None
    if text is not None:
        src = SourceFile(
            p.source,
            Modality.TEXT,
            int(p.size) if on_disk and p.size is not None else len(text.encode("utf-8")),
            float(p.mtime) if on_disk and p.mtime is not None else 0.0,
            path=Path(p.source) if on_disk else None,
            text=text,
            metadata=p.meta,
            external_id=p.external_id,
        )
        return Rebuilt(src)
    path = Path(p.source) if p.source else None
    if path is not None and path.is_absolute() and _file_hash(path) == p.content_hash:
        return Rebuilt(
            SourceFile.from_path(
                path, modality=Modality.TEXT, source=p.source, metadata=p.meta, external_id=p.external_id
            )
        )
    return Unavailable(
        item,
        f"text cannot be rebuilt exactly from its {len(chunks)} stored chunk(s), "
        "and no source file holds it any more",
    )


def rebuild_text(chunks: Sequence[dict[str, object]], content_hash: str) -> str | None:
    """The text whose chunks these payloads are, if its SHA-256 is `content_hash`; else None."""
    spans: list[tuple[int, int, str]] = []
    for c in chunks:
        start, end, text = c.get(Key.CHAR_START), c.get(Key.CHAR_END), c.get(Key.TEXT)
        if not (isinstance(start, int) and isinstance(end, int) and isinstance(text, str)):
            return None
        if end - start != len(text):
            return None
        spans.append((start, end, text))
    if not spans:
        return None
    spans.sort()
    # Known characters, and the runs between them (whitespace of a known length) no chunk covers.
    parts: list[str | int] = [spans[0][0]] if spans[0][0] > 0 else []
    pos = spans[0][0]
    buffer = ""
    for start, end, text in spans:
        if start > pos:
            parts += [buffer, start - pos]
            buffer, pos = "", start
        overlap = pos - start
        # An overlap must agree with the chunk before, and never reaches back over a gap.
        if overlap > 0 and not (len(buffer) >= overlap and buffer.endswith(text[:overlap])):
            return None
        if end > pos:
            buffer += text[max(0, overlap) :]
            pos = end
    parts.append(buffer)
    gaps = [i for i, part in enumerate(parts) if isinstance(part, int)]
    for fills in _gap_fills([int(parts[i]) for i in gaps]):
        filled = list(parts)
        for i, fill in zip(gaps, fills, strict=True):
            filled[i] = fill
        body = "".join(str(x) for x in filled)
        for tail in _TAILS:
            if hashlib.sha256((body + tail).encode("utf-8")).hexdigest() == content_hash:
                return body + tail
    return None


def _gap_fills(lengths: list[int]) -> Iterator[tuple[str, ...]]:
    def options(n: int) -> list[str]:
        runs = [c * n for c in _FILLS if len(c) == 1]
        if n % 2 == 0:
            runs.append("\r\n" * (n // 2))
        if n >= 2:
            runs += ["\n" + " " * (n - 1), " " * (n - 1) + "\n", "\n\n" + " " * (n - 2)]
        return list(dict.fromkeys(runs))

    if len(lengths) <= _MAX_COMBINED_GAPS:
        yield from itertools.product(*(options(n) for n in lengths))
        return
    for c in _FILLS:
        if len(c) == 1:
            yield tuple(c * n for n in lengths)


def _file_hash(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def namespaces(store: VectorStore) -> list[str]:
    """The id namespaces (tenants) that own items in `store` (an unscoped store)."""
    found: set[str] = set()
    for item in stored_items(store):
        found.add(item.namespace)
    return sorted(found, key=lambda n: (n != DEFAULT_NAMESPACE, n))

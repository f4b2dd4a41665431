"""One item's way through the ingest pipeline (Work), and its first stage: read and hash.

A file's bytes are read once: images and texts are hashed and then decoded from those same
bytes (so the content hash always matches what was embedded); audio and video are hashed as a
stream and decoded from the path by a worker. Torch-free.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from encoders.modality import Modality
from indexer.ingest_flow import IngestAborted as IngestAborted  # its home before ingest_flow
from indexer.journal import JournalEntry, Stale
from indexer.media_points import sentinel_segment
from indexer.schema import DEFAULT_NAMESPACE, PointPayload, PointRecord, point_id
from indexer.sources import ItemResult, ItemStatus, SourceFile, Stage

_CHUNK = 1 << 20


class Action(Enum):
    DONE = "done"  # a final result and nothing to write (skipped, failed, quarantined)
    CONFIRM = "confirm"  # unchanged: record it in the journal (its points are stored already)
    WRITE = "write"  # new points to write, then record


class Skip(Exception):
    """An item leaves the pipeline early with this outcome."""

    def __init__(self, status: ItemStatus, stage: Stage, reason: str) -> None:
        super().__init__(reason)
        self.result = ItemResult(status, reason, stage)


@dataclass(frozen=True)
class ReadLimits:
    max_file_bytes: int  # images are read whole: bigger files are quarantined unread
    max_text_bytes: int


@dataclass
class Work:
    src: SourceFile
    prior: JournalEntry | None = None  # what the journal holds for this source
    digest: str = ""
    data: bytes | None = None  # image / text bytes, read once; dropped after decoding
    key: str = ""  # what point ids derive from: the content hash or the caller's id
    base: PointPayload | None = None
    sentinel: str = ""  # the point whose presence means the item is fully indexed
    previous: Stale | None = None  # an earlier version under the same caller id, in the store
    decoded: Any = None  # encoders.embed Decoded, FittedImage, or JpegImage
    held: int = 0  # bytes of decoded media held against the pipeline's budget
    units: int = 1  # forward-pass slots: images, frames, chunks, windows
    embedding: Any = None  # encoders.embed Embedding, until the writer builds the records
    records: list[PointRecord] = field(default_factory=list)
    result: ItemResult | None = None
    action: Action = Action.DONE
    from_journal: bool = False  # the outcome was read from the journal, not found again

    def finish(self, result: ItemResult, action: Action = Action.DONE) -> Work:
        self.result, self.action = result, action
        self.data = self.decoded = self.embedding = None
        return self


def read_source(w: Work, limits: ReadLimits) -> None:
    """Set w.digest (and w.data for images and text). Raises Skip when the file cannot be read."""
    src = w.src
    if src.text is not None:
        w.data = src.text.encode("utf-8")
        w.digest = hashlib.sha256(w.data).hexdigest()
        return
    if src.path is None:
        raise Skip(ItemStatus.FAILED, Stage.READ, "neither a file nor inline text")
    whole = src.modality in (Modality.IMAGE, Modality.TEXT)
    cap = limits.max_text_bytes if src.modality == Modality.TEXT else limits.max_file_bytes
    h = hashlib.sha256()
    size = 0
    try:
        with open(src.path, "rb") as f:
            if whole:
                w.data = f.read(cap + 1)
                size = len(w.data)
                h.update(w.data)
            else:
                while chunk := f.read(_CHUNK):
                    size += len(chunk)
                    h.update(chunk)
    except OSError as exc:
        raise Skip(ItemStatus.QUARANTINED, Stage.READ, f"cannot read file: {exc.strerror or exc}") from None
    if whole and size > cap:
        name = "max_text_bytes" if src.modality == Modality.TEXT else "max_file_bytes"
        raise Skip(ItemStatus.QUARANTINED, Stage.READ, f"file is larger than the {cap}-byte limit ({name})")
    if size == 0:
        raise Skip(ItemStatus.QUARANTINED, Stage.READ, f"empty {src.modality} file")
    w.digest = h.hexdigest()


def identify(w: Work, namespace: str, bundle_id: str) -> None:
    """The item's key, payload and sentinel point, as indexer.items derives them (the same file
    written through the server's Upsert gets the same points)."""
    src = w.src
    w.key = f"id:{src.external_id}" if src.external_id else f"sha256:{w.digest}"
    on_disk = src.path is not None
    w.base = PointPayload(
        modality=src.modality.value,
        source=src.source,
        content_hash=w.digest,
        media_id=point_id(w.key, -1, namespace),
        bundle_id=bundle_id,
        meta=dict(src.metadata),
        tenant=None if namespace == DEFAULT_NAMESPACE else namespace,
        external_id=src.external_id,
        size=src.size if on_disk else None,
        mtime=src.mtime if on_disk else None,
    )
    timed = src.modality in (Modality.AUDIO, Modality.VIDEO)
    w.sentinel = point_id(w.key, sentinel_segment(timed), namespace)


def media_id_of(src: SourceFile, content_hash: str, namespace: str) -> str:
    key = f"id:{src.external_id}" if src.external_id else f"sha256:{content_hash}"
    return point_id(key, -1, namespace)


def same_content(stored: dict[str, Any], base: PointPayload) -> bool:
    """Whether a stored sentinel's payload says the item is indexed as `base` describes it."""
    return (
        stored.get("content_hash"),
        stored.get("bundle_id"),
        stored.get("source"),
        stored.get("meta", {}),
    ) == (base.content_hash, base.bundle_id, base.source, base.meta)

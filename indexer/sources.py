"""What the ingest pipeline takes in (SourceFile) and what it says about each one (ItemResult).

Torch-free: the remote ingest client builds SourceFiles from a walk or a manifest without loading
a model, and the server's ingest handler turns ItemResults into its responses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from encoders.decode import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS
from encoders.media import IMAGE_EXTENSIONS, TEXT_EXTENSIONS
from encoders.modality import Modality


class ItemStatus(StrEnum):
    INDEXED = "indexed"  # written (new or changed)
    UNCHANGED = "unchanged"  # already in the index with the same content and metadata
    FAILED = "failed"  # not indexed for a reason outside the file's content (see Stage)
    QUARANTINED = "quarantined"  # the file itself is unreadable, corrupt, hostile or too large


class Stage(StrEnum):
    """Where an item stopped: the first stage that could not handle it."""

    WALK = "walk"
    MANIFEST = "manifest"
    READ = "read"
    DECODE = "decode"
    EMBED = "embed"
    WRITE = "write"


@dataclass(frozen=True)
class SourceFile:
    """One item to ingest: a local file, or a manifest row's inline text."""

    source: str  # recorded as payload `source` and the journal key
    modality: Modality
    size: int
    mtime: float
    path: Path | None = None  # a local file the decode workers read
    text: str | None = None  # manifest rows with inline text and no file
    metadata: Mapping[str, Any] = field(default_factory=dict)  # -> payload `meta`
    origin: str | None = None  # for reports, e.g. "library.jsonl:17"
    external_id: str | None = None  # a caller id: point ids derive from it instead of the content

    @property
    def where(self) -> str:
        """How reports name the item: its origin (a manifest line) when it has one."""
        return f"{self.origin} ({self.source})" if self.origin and self.origin != self.source else self.source

    @classmethod
    def from_path(
        cls,
        path: Path,
        *,
        modality: Modality | None = None,
        source: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        origin: str | None = None,
        external_id: str | None = None,
    ) -> SourceFile:
        """Stat `path` into a SourceFile. Raises OSError when it cannot be read, ValueError when
        its type is not supported and no modality is given."""
        st = path.stat()
        if not path.is_file():
            raise IsADirectoryError(f"{path} is not a regular file")
        if not os.access(path, os.R_OK):
            raise PermissionError(f"{path} is not readable")
        kind = modality or modality_for(path)
        if kind is None:
            raise ValueError(f"{path}: unsupported file type {path.suffix or '(no extension)'!r}")
        return cls(
            source=source or str(path),
            modality=kind,
            size=st.st_size,
            mtime=st.st_mtime,
            path=path,
            metadata=dict(metadata or {}),
            origin=origin,
            external_id=external_id,
        )


@dataclass(frozen=True)
class ItemResult:
    """The final outcome of one source."""

    status: ItemStatus
    reason: str | None = None  # why it failed or was quarantined; a caveat when indexed (note)
    stage: Stage | None = None  # set for failed and quarantined items
    points: int = 0  # points written or confirmed
    ids: tuple[str, ...] = ()
    media_id: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (ItemStatus.INDEXED, ItemStatus.UNCHANGED)


def modality_for(path: Path) -> Modality | None:
    """The modality a file's extension names, or None for an unsupported type."""
    ext = path.suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return Modality.IMAGE
    if ext in TEXT_EXTENSIONS:
        return Modality.TEXT
    if ext in AUDIO_EXTENSIONS:
        return Modality.AUDIO
    if ext in VIDEO_EXTENSIONS:
        return Modality.VIDEO
    return None

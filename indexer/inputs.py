"""What callers hand the indexer, and what each item's write comes back as. Torch-free: the
remote ingest path and the CLI's ``--server`` commands build these without loading a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoders.modality import Modality


@dataclass(frozen=True)
class ItemInput:
    modality: Modality
    # text: str; image: bytes; audio / video: bytes, or a Path read by the decoder directly
    data: bytes | str | Path
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
    note: str | None = None  # indexed, with a caveat (e.g. a video without an audio track)

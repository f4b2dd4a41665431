"""Bulk ingest: walk a folder, read media files, send them in batches to a sink.

The sink is the local ItemIndexer (embedded store) or a gRPC client (``--server``); the walk,
batching, progress and summary are the same for both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from encoders.decode import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS
from encoders.errors import MediaDecodeError
from encoders.media import IMAGE_EXTENSIONS, TEXT_EXTENSIONS, decode_text
from encoders.modality import Modality
from indexer.inputs import ItemInput, ItemOutcome

Sink = Callable[[Sequence[ItemInput]], list[ItemOutcome]]


@dataclass(frozen=True)
class MediaFile:
    path: Path
    modality: Modality


@dataclass
class FileFailure:
    path: str
    reason: str


@dataclass
class IngestSummary:
    indexed: int = 0  # files written (new or changed)
    unchanged: int = 0  # files already in the index with the same content
    skipped: int = 0  # files that are not a supported media type
    failed: int = 0  # unreadable or corrupt files; see errors
    points: int = 0  # points written or confirmed (text may give several per file)
    seconds: float = 0.0
    errors: list[FileFailure] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def modality_for(path: Path) -> Modality | None:
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


def walk_media(root: Path) -> tuple[list[MediaFile], int]:
    """Supported files under `root` (or `root` itself), sorted, and the count of others skipped."""
    walked = (Path(d) / f for d, _, fs in os.walk(root) for f in fs)
    paths: Iterable[Path] = [root] if root.is_file() else walked
    found, skipped = [], 0
    for path in paths:
        modality = modality_for(path)
        if modality is None or path.name.startswith("."):
            skipped += 1
        else:
            found.append(MediaFile(path, modality))
    found.sort(key=lambda m: str(m.path))
    return found, skipped


def read_item(media: MediaFile) -> ItemInput:
    """One file as an item. Text and images are read here; audio and video stay on disk for the
    decoder. Raises OSError or MediaDecodeError when the file cannot be read."""
    stat = media.path.stat()
    data: bytes | str | Path
    if media.modality == Modality.TEXT:
        data = decode_text(media.path.read_bytes(), name=str(media.path))
    elif media.modality == Modality.IMAGE:
        data = media.path.read_bytes()
    else:
        data = media.path
    return ItemInput(
        modality=media.modality,
        data=data,
        source=str(media.path),
        attributes={"size": stat.st_size, "mtime": stat.st_mtime},
    )


def ingest_path(
    root: str | Path,
    sink: Sink,
    *,
    batch_items: int = 32,
    batch_bytes: int = 8 * 1024 * 1024,
    progress: bool = True,
) -> IngestSummary:
    """Ingest every supported file under `root` through `sink`. Raises FileNotFoundError if
    `root` does not exist; bad files are counted and listed, never raised."""
    start = time.perf_counter()
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"ingest path {root} does not exist")
    files, skipped = walk_media(root)
    summary = IngestSummary(skipped=skipped)
    batch: list[ItemInput] = []
    size = 0
    bar = tqdm(total=len(files), unit="file", disable=not progress, file=sys.stderr, desc="ingest")

    def flush() -> None:
        nonlocal batch, size
        if batch:
            _record(summary, batch, sink(batch))
            bar.update(len(batch))
            batch, size = [], 0

    for media in files:
        try:
            item = read_item(media)
        except (OSError, MediaDecodeError) as exc:
            summary.failed += 1
            summary.errors.append(FileFailure(str(media.path), _reason(exc)))
            bar.update(1)
            continue
        item_size = int(item.attributes["size"])
        if batch and (len(batch) >= batch_items or size + item_size > batch_bytes):
            flush()
        batch.append(item)
        size += item_size
    flush()
    bar.close()
    summary.seconds = round(time.perf_counter() - start, 3)
    return summary


def _record(summary: IngestSummary, batch: Sequence[ItemInput], outcomes: list[ItemOutcome]) -> None:
    for item, outcome in zip(batch, outcomes, strict=True):
        if outcome.error:
            summary.failed += 1
            summary.errors.append(FileFailure(item.source, outcome.error))
        elif outcome.unchanged:
            summary.unchanged += 1
            summary.points += len(outcome.ids)
        else:
            summary.indexed += 1
            summary.points += len(outcome.ids)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"cannot read file: {exc.strerror or exc}"
    return str(exc)

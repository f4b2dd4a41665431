"""Walking a library: every supported file under a folder, streamed in a stable order.

Memory stays flat whatever the library's size: one directory listing at a time, depth first,
sorted by name. A file the walk cannot stat (a dangling link) is still yielded, with size -1: the
pipeline then fails to read it and quarantines it with the system's reason. Torch-free.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from indexer.sources import SourceFile, modality_for


@dataclass
class WalkStats:
    """What the walk passed over: files of other types, folders it could not list."""

    skipped: int = 0
    unreadable_dirs: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def library_root(root: str | Path) -> Path:
    """`root` made absolute (links kept as named), so sources do not depend on the working
    directory. Raises FileNotFoundError / PermissionError naming the path."""
    path = Path(root).absolute()
    if not path.exists():
        raise FileNotFoundError(f"ingest path {path} does not exist")
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise PermissionError(f"ingest path {path} is a folder that cannot be listed (permission denied)")
    return path


def walk_sources(root: str | Path, stats: WalkStats | None = None) -> Iterator[SourceFile]:
    """Supported files under `root` (or `root` itself). Hidden files and folders are passed over
    (hidden files count as skipped), as are folders reached through links (no cycles)."""
    stats = stats if stats is not None else WalkStats()
    top = library_root(root)
    if not top.is_dir():
        found = _source(top, stats)
        if found is not None:
            yield found
        return
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            stats.unreadable_dirs.append((str(folder), exc.strerror or str(exc)))
            continue
        subdirs = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith("."):
                    subdirs.append(Path(entry.path))
                continue
            found = _source(Path(entry.path), stats, entry)
            if found is not None:
                yield found
        stack.extend(reversed(subdirs))  # depth first, in name order


def _source(path: Path, stats: WalkStats, entry: os.DirEntry[str] | None = None) -> SourceFile | None:
    modality = modality_for(path)
    if modality is None or path.name.startswith("."):
        stats.skipped += 1
        return None
    try:
        st = entry.stat() if entry is not None else path.stat()
    except OSError:
        return SourceFile(str(path), modality, size=-1, mtime=0.0, path=path)
    return SourceFile(str(path), modality, size=st.st_size, mtime=st.st_mtime, path=path)


def count_media(root: str | Path) -> int:
    """How many files walk_sources(root) yields, without statting them."""
    top = library_root(root)
    if not top.is_dir():
        return 1 if modality_for(top) is not None and not top.name.startswith(".") else 0
    n = 0
    for folder, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        n += sum(1 for f in files if not f.startswith(".") and modality_for(Path(folder, f)) is not None)
    return n


def count_in_background(root: str | Path, on_total: Callable[[int], None]) -> threading.Thread:
    """Count the library on a daemon thread and report the total (for the progress bar's ETA)
    while the ingest proceeds."""

    def run() -> None:
        try:
            on_total(count_media(root))
        except OSError:
            return  # the walk itself reports what it cannot read

    thread = threading.Thread(target=run, name="ingest-count", daemon=True)
    thread.start()
    return thread

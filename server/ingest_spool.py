"""The spool of remote ingest: where a stream's received files wait for the pipeline.

Each stream has a folder of its own, locked (flock) while the stream lives. A server killed with
SIGKILL leaves its folder behind, but the system releases its lock: the next stream removes
every folder whose lock it can take.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from indexer.sources import SourceFile

SPOOL_PREFIX = "mmsearch-ingest-"
SPOOL_LOCK = ".lock"
# A spool folder without its lock file this long after it was made is a killed server's.
ORPHAN_SECONDS = 60.0
# Only the characters a spool file's extension may keep from the client's file name.
_SUFFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def open_spool(root: Path | None) -> tuple[Path, IO[str]]:
    """A fresh spool folder under `root` (None: the system's temp folder), locked for as long as
    the returned file stays open. Folders that killed servers left behind are removed first:
    the lock of a dead process is released by the system, so a folder whose lock can be taken
    has no owner."""
    base = Path(root) if root is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    for folder in base.glob(f"{SPOOL_PREFIX}*"):
        _remove_if_orphaned(folder)
    path = Path(tempfile.mkdtemp(prefix=SPOOL_PREFIX, dir=base))
    lock = (path / SPOOL_LOCK).open("w")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return path, lock


def _remove_if_orphaned(folder: Path) -> None:
    try:
        lock = (folder / SPOOL_LOCK).open("r")
    except FileNotFoundError:
        # Being created this very moment, or left by a server killed between the two steps.
        with contextlib.suppress(OSError):
            if time.time() - folder.stat().st_mtime > ORPHAN_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)
        return
    except OSError:
        return  # not ours to judge (permissions): leave it
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # a live stream holds it
        shutil.rmtree(folder, ignore_errors=True)


def spool_file(spool: Path, file_id: int, source: str) -> Path:
    """Where a file's bytes go: named by its number, keeping only its extension (decoders may go
    by it), never anything else of the client's file name."""
    suffix = Path(source).suffix.lower()[:12]
    keep = suffix if suffix[1:] and set(suffix[1:]) <= _SUFFIX_CHARS else ""
    return spool / f"{file_id}{keep}"


@dataclass
class Spooled:
    """A wanted file: its header, and where its bytes go."""

    source: SourceFile
    path: Path
    cap: int | None  # bytes worth keeping: the pipeline reads an image or text up to its limit
    received: int = 0  # bytes the client sent
    kept: int = 0  # bytes written to the spool
    file: IO[bytes] | None = None

    def write(self, data: bytes, *, last: bool) -> None:
        if self.file is None:
            self.file = self.path.open("wb")
        if data:
            self.file.write(data)
        if last:
            self.close()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

"""Where an ingest stands: counts as items finish, a live bar, and the final summary.

Torch-free: the remote ingest client shows the same bar and prints the same summary.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm import tqdm

from indexer.sources import ItemResult, ItemStatus

# Failures listed in a summary; the counts stay exact beyond it (the quarantine file has them all).
MAX_LISTED_ERRORS = 1000


@dataclass
class FileFailure:
    path: str
    reason: str
    stage: str = ""
    status: str = ItemStatus.FAILED.value


@dataclass
class IngestSummary:
    indexed: int = 0  # files written (new or changed)
    unchanged: int = 0  # files already in the index with the same content
    skipped: int = 0  # files that are not a supported media type
    failed: int = 0  # items not indexed for a reason outside their content (manifest rows, ...)
    quarantined: int = 0  # unreadable, corrupt, hostile or oversized files; see quarantine_file
    removed: int = 0  # sources gone from the library whose points were removed (--sync)
    points: int = 0  # points written or confirmed (text may give several per file)
    seconds: float = 0.0
    items_per_s: float = 0.0  # items finished (any outcome) per second of the run
    quarantine_file: str | None = None  # the report, when anything was set aside
    errors: list[FileFailure] = field(default_factory=list)  # the first MAX_LISTED_ERRORS

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def finished(self) -> int:
        return self.indexed + self.unchanged + self.failed + self.quarantined

    def text(self) -> str:
        """The one-line summary the CLI prints."""
        line = (
            f"indexed {self.indexed}, unchanged {self.unchanged}, skipped {self.skipped}, "
            f"failed {self.failed}, quarantined {self.quarantined}"
        )
        if self.removed:
            line += f", removed {self.removed}"
        line += f" ({self.points} points, {self.seconds:.1f} s, {self.items_per_s:.1f} items/s)"
        if self.quarantine_file:
            line += f"\nreport of what was set aside: {self.quarantine_file}"
        return line


@dataclass(frozen=True)
class IngestProgress:
    done: int  # items finished, any outcome
    total: int | None  # items in all, once known (a walk still counting: None)
    indexed: int
    unchanged: int
    failed: int
    quarantined: int
    points: int
    elapsed: float
    items_per_s: float

    @property
    def eta_s(self) -> float | None:
        if self.total is None or self.items_per_s <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.items_per_s)


class Tally:
    """Counts results as they come (from any thread) into progress snapshots and a summary."""

    def __init__(self, summary: IngestSummary | None = None) -> None:
        self.summary = summary or IngestSummary()
        self.total: int | None = None
        self._start = time.perf_counter()
        self._lock = threading.Lock()

    def add(self, where: str, result: ItemResult) -> None:
        s = self.summary
        with self._lock:
            if result.status == ItemStatus.INDEXED:
                s.indexed += 1
            elif result.status == ItemStatus.UNCHANGED:
                s.unchanged += 1
            elif result.status == ItemStatus.QUARANTINED:
                s.quarantined += 1
            else:
                s.failed += 1
            s.points += result.points
            if not result.ok and len(s.errors) < MAX_LISTED_ERRORS:
                stage = result.stage.value if result.stage else ""
                s.errors.append(FileFailure(where, result.reason or "", stage, result.status.value))

    def progress(self) -> IngestProgress:
        s = self.summary
        elapsed = time.perf_counter() - self._start
        with self._lock:
            done = s.finished
            return IngestProgress(
                done=done,
                total=self.total,
                indexed=s.indexed,
                unchanged=s.unchanged,
                failed=s.failed,
                quarantined=s.quarantined,
                points=s.points,
                elapsed=elapsed,
                items_per_s=done / elapsed if elapsed > 0 else 0.0,
            )

    def finish(self) -> IngestSummary:
        s = self.summary
        s.seconds = round(time.perf_counter() - self._start, 3)
        s.items_per_s = round(s.finished / s.seconds, 2) if s.seconds > 0 else 0.0
        return s


class ProgressBar:
    """A live bar on stderr: items/s, ETA once the total is known, failures as they happen."""

    def __init__(self, *, enabled: bool = True, desc: str = "ingest") -> None:
        self._bar = tqdm(
            total=None, unit="file", disable=not enabled, file=sys.stderr, desc=desc, smoothing=0.1
        )
        self._shown = 0

    def __call__(self, p: IngestProgress) -> None:
        if p.total is not None and self._bar.total != p.total:
            self._bar.total = p.total
            self._bar.refresh()
        if p.done > self._shown:
            self._bar.update(p.done - self._shown)
            self._shown = p.done
        bad = p.failed + p.quarantined
        self._bar.set_postfix_str(f"failed {bad}" if bad else "", refresh=False)

    def close(self) -> None:
        self._bar.close()


ProgressFn = Callable[[IngestProgress], None]

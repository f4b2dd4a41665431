"""The write stage: points in batches to the store, then the journal, then the reports.

The order is what makes a kill -9 at any moment harmless: a file is journaled only after its
points are stored (in the same batch's later step), so a re-run either skips it (journaled,
points present) or redoes it (not journaled; its deterministic point ids make the redo an
overwrite). Points an earlier version of a file leaves behind are recorded as stale in the same
journal transaction and deleted at the end of the run, once no source holds that content.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from indexer.ingest_flow import IngestAborted
from indexer.ingest_work import Action, Work
from indexer.journal import Journal, JournalEntry, JournalError, SetAside, Stale, metadata_digest
from indexer.manifest import Rejected
from indexer.progress import IngestProgress, Tally
from indexer.quarantine import Quarantine
from indexer.schema import PointRecord
from indexer.sources import ItemResult, ItemStatus, SourceFile, Stage

OnItem = Callable[[SourceFile, ItemResult], None]
PROGRESS_EVERY = 0.1  # seconds between progress callbacks


class PointWrites(Protocol):
    """What the writer needs of a store: a VectorStore, or a Ray ingest's target
    (indexer.ray_ingest.IngestTarget: a store or a server's WritePoints)."""

    def upsert(self, points: Sequence[PointRecord]) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...


class Writer:
    def __init__(
        self,
        store: PointWrites,
        store_lock: threading.Lock,
        journal: Journal | None,
        quarantine: Quarantine | None,
        tally: Tally,
        *,
        on_item: OnItem | None = None,
        progress: Callable[[IngestProgress], None] | None = None,
    ) -> None:
        self.store = store
        self.store_lock = store_lock
        self.journal = journal
        self.quarantine = quarantine
        self.tally = tally
        self.on_item = on_item
        self.progress = progress
        self._last_progress = 0.0

    def flush(self, works: Sequence[Work]) -> None:
        """Write, record and report a batch of finished items."""
        points = [r for w in works if w.action == Action.WRITE for r in w.records]
        if points:
            try:
                with self.store_lock:
                    self.store.upsert(points)
            except Exception as exc:  # any store failure stops the run; what is journaled stays valid
                raise IngestAborted(f"writing {len(points)} points to the store failed: {exc}") from exc
        self._record(works)
        for w in works:
            self._report(w)
        self.tick()

    def _record(self, works: Sequence[Work]) -> None:
        entries: list[JournalEntry] = []
        stale: list[Stale] = []
        aside: list[SetAside] = []
        for w in works:
            result, src = w.result, w.src
            if result is not None and _remembered(w):
                meta = metadata_digest(src.metadata)
                aside.append(SetAside(src.source, src.size, src.mtime, meta, result.reason or ""))
            if w.action == Action.DONE or w.result is None:
                continue
            ids = set(w.result.ids)
            if w.prior is not None and (gone := tuple(i for i in w.prior.point_ids if i not in ids)):
                stale.append((w.prior.content_hash, gone))
            if w.previous is not None and (gone := tuple(i for i in w.previous[1] if i not in ids)):
                stale.append((w.previous[0], gone))
            entries.append(
                JournalEntry(
                    w.src.source,
                    w.src.size,
                    w.src.mtime,
                    metadata_digest(w.src.metadata),
                    w.digest,
                    w.base.bundle_id if w.base else "",
                    w.result.ids,
                )
            )
        if self.journal is None:
            # No journal to defer to: drop an earlier version's leftovers now (caller ids only;
            # content-addressed points are never stale without a journal to say so).
            leftovers = [i for h, ids in stale for i in ids]
            if leftovers:
                with self.store_lock:
                    self.store.delete(leftovers)
            return
        try:
            self.journal.record(entries, stale, aside)
        except JournalError as exc:
            raise IngestAborted(str(exc)) from exc

    def _report(self, w: Work) -> None:
        result = w.result
        if result is None:
            return
        self.tally.add(w.src.where, result)
        if not result.ok and self.quarantine is not None and result.stage is not None:
            try:
                self.quarantine.add(w.src, result.reason or "", result.stage, result.status)
            except OSError as exc:
                raise IngestAborted(
                    f"the quarantine report {self.quarantine.path} cannot be written: {exc}"
                ) from exc
        if self.on_item is not None:
            self.on_item(w.src, result)

    def reject(self, r: Rejected) -> None:
        """Report an item refused before the pipeline (a bad manifest row)."""
        result = ItemResult(ItemStatus.FAILED, r.reason, r.stage)
        self.tally.add(r.origin or r.source, result)
        if self.quarantine is not None:
            try:
                self.quarantine.add(r.source, r.reason, r.stage, result.status, origin=r.origin)
            except OSError as exc:
                raise IngestAborted(
                    f"the quarantine report {self.quarantine.path} cannot be written: {exc}"
                ) from exc

    def tick(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is not None and (force or now - self._last_progress >= PROGRESS_EVERY):
            self._last_progress = now
            self.progress(self.tally.progress())


def _remembered(w: Work) -> bool:
    """A file that failed to decode: the journal keeps it set aside until it changes."""
    r = w.result
    return (
        r is not None
        and r.status == ItemStatus.QUARANTINED
        and r.stage == Stage.DECODE
        and w.src.path is not None
        and w.src.size >= 0
        and not w.from_journal
    )

"""Model swaps without downtime: rebuild the index under a new bundle beside the live one, then
switch to it in one atomic step.

    build     every stored item (indexer.reindex_items) through the ingest pipeline with the new
              bundle's embedder, into a new collection (one pipeline run per tenant namespace);
              the live collection keeps answering all along
    catch up  what changed in the live collection meanwhile (writes keep going): items added or
              changed are indexed, items deleted are deleted; repeated until a round is small
    settle    one last catch-up, with writers paused by the caller (server.reindex), then
    switch    the pointer file or the live alias (indexer.collections), refused while some items
              could not be rebuilt unless `allow_missing`

The new collection is named after its bundle, so a reindex cut short resumes: items already
there with the same content are confirmed, not embedded again. Ids are bundle-free, so every
item keeps its point ids. The old collection stays until it is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum

from encoders.embed import Embedder
from indexer.collections import Collections
from indexer.pipeline import IngestPipeline, PipelineOptions
from indexer.quarantine import Quarantine
from indexer.reindex_items import PAGE, StoredItem, Unavailable, rebuild, stored_items
from indexer.schema import DEFAULT_NAMESPACE, KEYWORD_INDEXES, CollectionSchema
from indexer.sources import ItemResult, ItemStatus, SourceFile
from indexer.store import StoreError, VectorStore
from indexer.tenancy import tenant_store

log = logging.getLogger(__name__)
MAX_LISTED = 10_000  # missing items listed in a report; the count stays exact beyond it


class Phase(StrEnum):
    SCAN = "scan"
    BUILD = "build"
    CATCH_UP = "catch-up"
    SWITCH = "switch"
    DONE = "done"


class ReindexError(Exception):
    """A reindex cannot start (the same bundle, an unusable store)."""


@dataclass(frozen=True)
class ReindexOptions:
    allow_missing: bool = False  # switch even though some items could not be rebuilt
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    catch_up_rounds: int = 5  # at most this many catch-up rounds before the settle
    settled_items: int = 100  # a round that finds at most this many changes ends the catch-up


@dataclass(frozen=True)
class MissingItem:
    """An item the new collection does not have: its source is gone or it failed to rebuild."""

    source: str
    media_id: str
    modality: str
    namespace: str
    reason: str
    stage: str = "source"  # "source", or the pipeline stage that refused it


@dataclass
class ReindexProgress:
    phase: Phase
    items: int = 0  # items of the live collection (known after the scan)
    done: int = 0  # items finished in this phase
    indexed: int = 0
    unchanged: int = 0
    missing: int = 0
    changed: int = 0
    removed: int = 0
    points: int = 0
    elapsed: float = 0.0


@dataclass
class ReindexReport:
    old_collection: str
    new_collection: str
    old_bundle_id: str
    new_bundle_id: str
    items: int = 0
    indexed: int = 0  # embedded with the new bundle
    unchanged: int = 0  # already in the new collection (a resumed run)
    points: int = 0
    removed: int = 0  # items deleted from the live collection during the build, dropped here too
    missing: list[MissingItem] = field(default_factory=list)  # the first MAX_LISTED
    missing_count: int = 0
    changed: list[str] = field(default_factory=list)  # sources whose file changed since indexed
    switched: bool = False
    refused: str | None = None  # why the switch was refused
    dropped: list[str] = field(default_factory=list)
    seconds: float = 0.0


OnProgress = Callable[[ReindexProgress], None]


class Reindexer:
    """One reindex of the live collection of `collections` (open as `live`) into `embedder`'s
    bundle. `build()`, then `settle()` and `switch()`; `new_store` is the new collection."""

    def __init__(
        self,
        collections: Collections,
        live: VectorStore,
        embedder: Embedder,
        *,
        bundle_ref: str,
        options: ReindexOptions | None = None,
        on_progress: OnProgress | None = None,
        check: Callable[[], None] | None = None,
        quarantine: Quarantine | None = None,
    ) -> None:
        self.collections, self.live, self.embedder = collections, live, embedder
        self.options = options or ReindexOptions()
        self.on_progress, self.check, self.quarantine = on_progress, check, quarantine
        bundle = embedder.encoder.bundle
        if bundle.bundle_id == live.schema.bundle_id:
            raise ReindexError(f"the index already uses bundle {bundle.bundle_id}: nothing to reindex")
        self.old_name = collections.live()
        self.new_name = collections.name_for(bundle.bundle_id)
        if self.new_name == self.old_name:
            raise ReindexError(f"collection {self.new_name!r} is the live one")
        schema = CollectionSchema(bundle.bundle_id, bundle.embed_dim, name=self.new_name)
        self.new_store = collections.open(self.new_name, schema, bundle_ref=bundle_ref)
        self.report = ReindexReport(self.old_name, self.new_name, live.schema.bundle_id, bundle.bundle_id)
        self._start = time.perf_counter()
        self._lock = threading.RLock()  # the feeder and writer threads of the pipeline report
        # Items dealt with apart from a plain rebuild (missing, failed, changed), by sentinel id,
        # with the fingerprint they had then: a catch-up redoes them only if they change again.
        self._handled: dict[str, tuple[str, str, str]] = {}
        self._missing: dict[str, MissingItem] = {}
        # New media ids of changed files -> the old item's sentinel, so the catch-up keeps them.
        self._produced: dict[str, str] = {}
        self._pending: dict[int, tuple[SourceFile, StoredItem, bool]] = {}
        self._progress = ReindexProgress(Phase.SCAN)
        self._last_emit = 0.0
        self._copy_field_indexes()

    # -- the phases -----------------------------------------------------------------------

    def build(self) -> None:
        """The full pass, then catch-up rounds until one finds little to do."""
        census = _census(self.live)
        self.report.items = total = sum(census.values())
        self._progress = ReindexProgress(Phase.BUILD, items=total)
        self._emit(force=True)
        for ns in census:
            self._run(ns, stored_items(tenant_store(self.live, ns)))
        for _ in range(self.options.catch_up_rounds):
            if self.catch_up() <= self.options.settled_items:
                break

    def catch_up(self) -> int:
        """Bring the new collection level with the live one; the number of items it changed."""
        self._progress = replace(self._progress, phase=Phase.CATCH_UP, done=0)
        self._emit(force=True)
        changed = 0
        census = _census(self.live)
        for ns in sorted(set(census) | set(_census(self.new_store))):
            todo = list(self._stale_items(ns))
            changed += len(todo)
            if todo:
                self._run(ns, todo)
            changed += self._drop_deleted(ns)
        self.report.items = sum(census.values())
        return changed

    def settle(self) -> int:
        """The last catch-up, while the caller keeps writers away from the live collection."""
        return self.catch_up()

    def switch(self) -> bool:
        """Make the new collection live, unless items are missing and that is not allowed."""
        self._progress = replace(self._progress, phase=Phase.SWITCH)
        self._emit(force=True)
        r = self.report
        r.missing_count = len(self._missing)
        r.missing = sorted(self._missing.values(), key=lambda m: (m.namespace, m.source))[:MAX_LISTED]
        if self._missing and not self.options.allow_missing:
            r.refused = (
                f"{len(self._missing)} item(s) could not be rebuilt (listed); the switch is refused. "
                f"The new collection {self.new_name!r} is kept: restore the sources and run the "
                "reindex again (it resumes), or pass --allow-missing to switch without them"
            )
        else:
            self.new_store.optimize()
            self.collections.switch(self.new_name)
            r.switched = True
            log.info("reindex: collection %s (bundle %s) is live", self.new_name, r.new_bundle_id)
        r.seconds = time.perf_counter() - self._start
        self._progress = replace(self._progress, phase=Phase.DONE)
        self._emit(force=True)
        return r.switched

    # -- one pipeline run -----------------------------------------------------------------

    def _run(self, ns: str, items: Iterable[StoredItem]) -> None:
        source = tenant_store(self.live, ns)
        options = replace(self.options.pipeline, index_fields=())  # copied on the bare store
        with IngestPipeline(
            self.embedder, tenant_store(self.new_store, ns), options, namespace=ns, quarantine=self.quarantine
        ) as pipeline:
            pipeline.run(self._sources(items, source), on_item=self._on_item, check=self.check)

    def _sources(self, items: Iterable[StoredItem], store: VectorStore) -> Iterator[SourceFile]:
        for item in items:
            got = rebuild(item, store)
            if isinstance(got, Unavailable):
                self._miss(item, got.reason)
                self._forget_in_new(item)
                continue
            with self._lock:
                self._pending[id(got.source)] = (got.source, item, got.suspect)
            yield got.source

    def _on_item(self, src: SourceFile, result: ItemResult) -> None:
        with self._lock:
            self._record(src, result)
        self._emit()

    def _record(self, src: SourceFile, result: ItemResult) -> None:
        _, item, suspect = self._pending.pop(id(src))
        p = self._progress
        p.done += 1
        p.points += result.points
        if not result.ok:
            self._miss(item, result.reason or result.status.value, stage=str(result.stage or ""))
        else:
            self._missing.pop(item.id, None)
            if result.status == ItemStatus.INDEXED:
                p.indexed += 1
                self.report.indexed += 1
            else:
                p.unchanged += 1
                self.report.unchanged += 1
            self.report.points += result.points
            if suspect and self._changed(item, result):
                self._handled[item.id] = item.fingerprint
                if len(self.report.changed) < MAX_LISTED:
                    self.report.changed.append(item.payload.source)
                p.changed += 1

    def _changed(self, item: StoredItem, result: ItemResult) -> bool:
        if result.media_id != item.media_id:  # content-addressed: new content, new media id
            self._produced[result.media_id] = item.id
            return True
        now = self.new_store.get([item.id])
        return bool(now) and StoredItem.from_point(now[0]).fingerprint != item.fingerprint

    def _miss(self, item: StoredItem, reason: str, *, stage: str = "source") -> None:
        p = item.payload
        with self._lock:
            self._missing[item.id] = MissingItem(
                p.source, p.media_id, p.modality, item.namespace, reason, stage
            )
            self._handled[item.id] = item.fingerprint
            self._progress.missing = len(self._missing)
        self._emit()

    def _forget_in_new(self, item: StoredItem) -> None:
        # An item that cannot be rebuilt any more must not stay in the new collection as it was.
        view = tenant_store(self.new_store, item.namespace)
        now = view.get([item.id])
        if now:
            view.delete(list(StoredItem.from_point(now[0]).point_ids))

    # -- catch-up -------------------------------------------------------------------------

    def _stale_items(self, ns: str) -> Iterator[StoredItem]:
        """Items of the live collection the new one lacks, or holds with other content."""
        new_view = tenant_store(self.new_store, ns)
        for page in _pages(stored_items(tenant_store(self.live, ns))):
            there = {p.id: StoredItem.from_point(p) for p in new_view.get([i.id for i in page])}
            for item in page:
                fp = item.fingerprint
                if self._handled.get(item.id) == fp:
                    continue
                self._handled.pop(item.id, None)
                now = there.get(item.id)
                if now is None or now.fingerprint != fp:
                    yield item

    def _drop_deleted(self, ns: str) -> int:
        """Delete the new collection's items that the live one no longer has."""
        live_view, new_view = tenant_store(self.live, ns), tenant_store(self.new_store, ns)
        gone: list[StoredItem] = []
        for page in _pages(stored_items(new_view)):
            present = {p.id for p in live_view.get([i.id for i in page])}
            origins = [self._produced[i.media_id] for i in page if i.media_id in self._produced]
            alive = {p.id for p in live_view.get(origins)} if origins else set()
            for item in page:
                if item.id in present:
                    continue
                origin = self._produced.get(item.media_id)
                if origin is not None and origin in alive:
                    continue  # a changed file's current content: its old item still exists
                gone.append(item)
        for item in gone:
            new_view.delete(list(item.point_ids))
            self._produced.pop(item.media_id, None)
        self.report.removed += len(gone)
        self._progress.removed = self.report.removed
        return len(gone)

    # -- helpers --------------------------------------------------------------------------

    def _copy_field_indexes(self) -> None:
        defaults = {k.value for k in KEYWORD_INDEXES}
        for key, kind in self.live.field_indexes().items():
            if key not in defaults:
                self.new_store.create_field_index(key, kind)

    def _emit(self, *, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.perf_counter()
        with self._lock:
            if not force and now - self._last_emit < 0.25:
                return
            self._last_emit = now
            self._progress.elapsed = now - self._start
            snapshot = replace(self._progress)
        self.on_progress(snapshot)

    def close(self) -> None:
        """Close the new collection (a caller that serves it keeps `new_store` instead)."""
        self.new_store.close()


def _census(store: VectorStore) -> dict[str, int]:
    """Items per id namespace (tenant), the default namespace first."""
    counts: dict[str, int] = {}
    for item in stored_items(store):
        counts[item.namespace] = counts.get(item.namespace, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (kv[0] != DEFAULT_NAMESPACE, kv[0])))


def _pages(items: Iterator[StoredItem], size: int = PAGE) -> Iterator[list[StoredItem]]:
    page: list[StoredItem] = []
    for item in items:
        page.append(item)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page


def drop_old(collections: Collections) -> list[str]:
    """Drop every collection but the live one; the names dropped. Raises StoreError naming the
    ones that could not be dropped (open in another process), after dropping the others."""
    live = collections.live()
    dropped: list[str] = []
    failed: list[str] = []
    for name in collections.names():
        if name == live:
            continue
        try:
            collections.drop(name)
        except StoreError as exc:
            failed.append(f"{name}: {exc}")
            continue
        dropped.append(name)
    if failed:
        raise StoreError("; ".join(failed) + (f" (dropped: {', '.join(dropped)})" if dropped else ""))
    return dropped

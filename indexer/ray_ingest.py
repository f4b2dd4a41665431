"""`mmsearch ingest PATH --ray`: the ingest pipeline's stages as Ray Data operations.

    driver       walk (or manifest) and journal skip: unchanged files never reach the cluster
    Ray tasks    read, hash, decode, on CPUs            (indexer.ray_stages.DecodeStage)
    Ray actors   embed into point records, one model    (indexer.ray_stages.EmbedStage)
                 per actor, a GPU each when the cluster has GPUs
    driver       the store's word on each item, the write, the journal, the quarantine report
                 and the summary (indexer.ingest_write.Writer, as the local pipeline does)

Every step is the local pipeline's own code (indexer.ingest_steps, the pipeline's Decoders and
BatchEncoder), so the same files give the same point ids, payloads, report and summary. Points
go to an IngestTarget: a store the driver opens (a Qdrant server or cluster; or the embedded
store, when no server owns it) or a server's WritePoints (mmsearch.ray_cli.ServerTarget).
Progress is Ray Data's own. Ray is imported only here, when an ingest runs.

The listing is made on the driver before the dataset starts (one pickled Work per file to
ingest: a few hundred bytes each), which is what lets Ray size the decode tasks and show the
total.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from indexer.ingest import library_sources
from indexer.ingest_flow import IngestAborted
from indexer.ingest_local import IngestRequest
from indexer.ingest_steps import (
    journal_call,
    purge_stale,
    retire_missing,
    settle_stored,
    skip_by_stat,
    start_journal,
)
from indexer.ingest_work import Action, Work
from indexer.ingest_write import Writer
from indexer.journal import Journal
from indexer.manifest import Rejected
from indexer.pipeline import PipelineOptions
from indexer.progress import IngestSummary, Tally
from indexer.quarantine import Quarantine
from indexer.ray_stages import DecodeStage, EmbedderFactory, EmbedStage, StageConfig, pack, unpack
from indexer.schema import DEFAULT_NAMESPACE, PointRecord
from indexer.sinks import StoreSink
from indexer.sources import SourceFile, Stage
from indexer.store import VectorStore
from indexer.walk import WalkStats, library_root

_SEEN_BATCH = 1000
_DONE_BATCH = 512  # items finished on the driver (unchanged, set aside) reported per flush
# Memory an embed actor holds besides its model: torch's runtime and a batch in flight
# (some 600 MiB measured with the tiny bundle on CPU).
ACTOR_MEMORY = 1 << 30


@dataclass(frozen=True)
class RayOptions:
    address: str | None = (
        None  # a Ray cluster ("auto", "ray://head:10001"); None: $RAY_ADDRESS or a local one
    )
    actors: int | None = None  # embed actors; None: one per GPU (gpus_per_actor each), or one
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else none
    cpus_per_actor: float = 1.0
    decode_cpus: float = 1.0  # CPUs one decode task reserves
    decode_batch: int = 16  # files per decode task
    decode_workers: int = 2  # decoder worker processes per decode task process

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors must be at least 1, got {self.actors}")
        if self.decode_batch < 1 or self.decode_workers < 1:
            raise ValueError("decode_batch and decode_workers must be at least 1")
        if not (self.decode_cpus > 0 and self.cpus_per_actor > 0):
            raise ValueError("decode_cpus and cpus_per_actor must be > 0")


class IngestTarget(Protocol):
    """Where a Ray ingest writes: points of one bundle in one id namespace."""

    bundle_id: str
    namespace: str

    def upsert(self, points: Sequence[PointRecord]) -> None:
        """Write finished points (an item's sentinel after its other points)."""
        ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def stored(self, ids: Sequence[str]) -> dict[str, Mapping[str, Any]] | None:
        """The payloads stored under `ids` (sentinel points); None when the target cannot say,
        and an item found in the index but not in the journal is then written again."""
        ...

    def count(self) -> int: ...

    def create_field_index(self, key: str, kind: str) -> None: ...


class StoreTarget:
    """A store the driver opens: a Qdrant server or cluster, or an embedded store no server
    holds. Written through indexer.sinks.StoreSink (the checks WritePoints makes)."""

    def __init__(self, store: VectorStore, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.store = store
        self.sink = StoreSink(store, namespace=namespace)
        self.bundle_id, self.namespace = self.sink.bundle_id, namespace

    def upsert(self, points: Sequence[PointRecord]) -> None:
        self.sink.write(points)

    def delete(self, ids: Sequence[str]) -> None:
        self.sink.store.delete(ids)

    def stored(self, ids: Sequence[str]) -> dict[str, Mapping[str, Any]] | None:
        return {p.id: p.payload for p in self.sink.store.get(ids)} if ids else {}

    def count(self) -> int:
        return self.sink.store.count()

    def create_field_index(self, key: str, kind: str) -> None:
        self.store.create_field_index(key, kind)


def ray_ingest(
    make_embedder: EmbedderFactory,
    target: IngestTarget,
    request: IngestRequest,
    options: PipelineOptions | None = None,
    ray_options: RayOptions | None = None,
    *,
    device: str | None = None,
    model_bytes: int = 0,
) -> IngestSummary:
    """Ingest `request`'s folder or manifest into `target` on a Ray cluster (connected to, or
    started for the run, when Ray is not initialised yet). `make_embedder(device)` builds the
    ingest Embedder on a worker, exactly as the driver's would be; `device` is the embed
    actors' (None: their GPU when they have one); `model_bytes` is the memory each actor
    reserves for its copy of the model. Raises as ingest_library does."""
    ray = import_ray()
    options = options or PipelineOptions()
    ray_options = ray_options or RayOptions()
    root = library_root(request.path) if request.path is not None else None
    started = not ray.is_initialized()
    if started:
        ray.init(address=ray_options.address, log_to_driver=True)
    try:
        run = _Run(ray, make_embedder, target, request, options, ray_options, device, model_bytes)
        return run.run(root)
    finally:
        if started:
            ray.shutdown()


class RayUnavailable(ValueError):
    """The Ray option cannot run here: Ray Data is not installed (a bad option for this install,
    reported like the CLI's other bad options)."""


def import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RayUnavailable(
            f"ingest --ray needs Ray Data: pip install 'mmsearch[ray]' (ray[data] and pyarrow); {exc}"
        ) from None
    return ray


class _Run:
    """One Ray ingest: listing and journal skip, the dataset, and the writes."""

    def __init__(
        self,
        ray: Any,
        make_embedder: EmbedderFactory,
        target: IngestTarget,
        request: IngestRequest,
        options: PipelineOptions,
        ray_options: RayOptions,
        device: str | None,
        model_bytes: int,
    ) -> None:
        self.ray, self.target, self.request = ray, target, request
        self.options, self.ray_options = options, ray_options
        self.namespace = target.namespace
        self.journal = Journal(request.journal, namespace=self.namespace) if request.journal else None
        if self.journal is not None:
            if self.journal.bundle_id not in (None, target.bundle_id):
                self.journal.close()
                raise ValueError(
                    f"journal {request.journal} is bound to bundle {self.journal.bundle_id}, "
                    f"not {target.bundle_id}"
                )
            self.journal.bundle_id = target.bundle_id
        self.quarantine = Quarantine(request.quarantine) if request.quarantine else None
        self.tally = Tally()
        self.writer = Writer(target, threading.Lock(), self.journal, self.quarantine, self.tally)
        self.unlisted: list[str] = []
        gpus = float(ray.cluster_resources().get("GPU", 0))
        per_actor = (
            ray_options.gpus_per_actor if ray_options.gpus_per_actor is not None else (1.0 if gpus else 0)
        )
        self.actor_gpus = per_actor
        self.actors = ray_options.actors or (max(1, int(gpus // per_actor)) if per_actor else 1)
        self.model_bytes = model_bytes
        # JPEGs are left to the actors' GPUs as the local pipeline leaves them to its own.
        on_gpu = per_actor > 0 and (device is None or device.startswith("cuda"))
        image_decode = options.image_decode
        self.config = StageConfig(
            make_embedder,
            options,
            self.namespace,
            target.bundle_id,
            device=device,
            device_jpeg=image_decode == "device" or (image_decode == "auto" and on_gpu),
            decode_workers=ray_options.decode_workers,
        )

    def run(self, root: Path | None) -> IngestSummary:
        try:
            summary = self._run(root)
        finally:
            if self.journal is not None:
                self.journal.close()
            if self.quarantine is not None:
                self.quarantine.close()
        return summary

    def _run(self, root: Path | None) -> IngestSummary:
        journal, request = self.journal, self.request
        if journal is not None:
            start_journal(journal, count=self.target.count, delete=self.target.delete)
        for f in self.options.index_fields:
            self.target.create_field_index(f.key, f.kind.value)
        stats = WalkStats()
        field_kinds = {f.name: f.kind for f in self.options.index_fields}
        sources = library_sources(
            root,
            manifest=request.manifest,
            stats=stats,
            max_errors=request.max_errors,
            field_kinds=field_kinds,
        )
        sync_prefix = None
        if request.sync and root is not None:
            sync_prefix = str(root) + os.sep if os.path.isdir(root) else str(root)
            if journal is not None:
                journal.begin_seen()
        todo = self._list(sources, track_seen=sync_prefix is not None)
        if todo:
            for works in self._dataset(todo):
                self._write(works)
        summary = self.tally.summary
        if sync_prefix is not None and journal is not None:
            summary.removed = retire_missing(journal, sync_prefix, self.unlisted)
        if journal is not None:
            purge_stale(journal, self.target.delete)
        if self.quarantine is not None and self.quarantine.written:
            summary.quarantine_file = str(self.quarantine.path)
        summary = self.tally.finish()
        summary.skipped = stats.skipped
        return summary

    # -- on the driver: listing and journal skip ---------------------------------------------

    def _list(self, sources: Iterator[SourceFile | Rejected], *, track_seen: bool) -> list[Work]:
        """The items to send to the cluster; the others are reported here and now."""
        todo: list[Work] = []
        done: list[Work] = []
        seen: list[str] = []
        for item in sources:
            if isinstance(item, Rejected):
                if item.stage == Stage.WALK:
                    self.unlisted.append(item.source)
                self.writer.reject(item)
                continue
            if track_seen:
                seen.append(item.source)
                if len(seen) >= _SEEN_BATCH:
                    self._mark_seen(seen)
                    seen = []
            w = skip_by_stat(
                item, self.journal, self.namespace, retry_quarantined=self.options.retry_quarantined
            )
            if w.result is None:
                todo.append(w)
                continue
            done.append(w)
            if len(done) >= _DONE_BATCH:
                self.writer.flush(done)
                done = []
        self._mark_seen(seen)
        if done:
            self.writer.flush(done)
        return todo

    def _mark_seen(self, sources: list[str]) -> None:
        journal = self.journal
        if sources and journal is not None:
            journal_call(lambda: journal.mark_seen(sources))

    # -- on the cluster: decode tasks and embed actors ---------------------------------------

    def _dataset(self, todo: list[Work]) -> Iterator[list[Work]]:
        ray, ropts = self.ray, self.ray_options
        ray.data.DataContext.get_current().enable_progress_bars = self.request.progress
        blocks = math.ceil(len(todo) / ropts.decode_batch)
        rows = pack(todo)["work"]
        ds = ray.data.from_items([{"work": blob} for blob in rows], override_num_blocks=blocks)
        ds = ds.map_batches(
            DecodeStage(self.config),
            batch_size=ropts.decode_batch,
            batch_format="numpy",
            num_cpus=ropts.decode_cpus,
        )
        # An actor reserves the memory it takes (the runtime, a batch, the model while it loads):
        # true, and it keeps Ray from fusing the decode tasks into the actors (Ray fuses maps
        # whose resource requests are equal), which would decode and embed in turn in one process.
        ds = ds.map_batches(
            EmbedStage,
            fn_constructor_args=(self.config,),
            batch_size=self.options.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            num_cpus=ropts.cpus_per_actor,
            num_gpus=self.actor_gpus,
            memory=ACTOR_MEMORY + 2 * self.model_bytes,
        )
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                yield unpack(batch)
        except ray.exceptions.RayError as exc:
            raise IngestAborted(f"the Ray ingest failed: {_cause(exc)}") from exc

    # -- on the driver: the writes -----------------------------------------------------------

    def _write(self, works: list[Work]) -> None:
        """Points of a batch of embedded items, checked against the store, then written and
        journaled `write_batch` points at a time."""
        writing = [w for w in works if w.action == Action.WRITE]
        if writing:
            try:
                found = self.target.stored([w.sentinel for w in writing])
            except Exception as exc:  # the store is unreachable: nothing else can go on either
                raise IngestAborted(f"reading from the store failed: {exc}") from exc
            if found is not None:
                for w in writing:
                    settle_stored(w, found.get(w.sentinel))
        batch: list[Work] = []
        points = 0
        for w in works:
            batch.append(w)
            points += len(w.records) if w.action == Action.WRITE else 0
            if points >= self.options.write_batch:
                self.writer.flush(batch)
                batch, points = [], 0
        if batch:
            self.writer.flush(batch)


def _cause(exc: BaseException) -> str:
    """The message of what failed on the worker, without Ray's traceback around it."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__

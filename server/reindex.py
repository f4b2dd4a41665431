"""Model swaps inside a running server: the Reindex RPC, and replicas following a switch.

Reindex runs indexer.reindex.Reindexer on a thread of its own while the server keeps answering
from its current (embedder, store) pair. For the last catch-up and the switch it holds new writes
at the gate (server.calls) and waits for those in flight; then it makes the new collection live,
swaps the servicer's services (one reference: a call that has begun finishes on the old pair,
every later call gets the new one), lets writes through again, and closes the old services once
their last call has ended. A client that goes away stops the reindex; running it again resumes.

Replicas of a Qdrant deployment each check the live alias every FOLLOW_SECONDS; when it names
another collection they load the bundle that collection records (its `bundle` metadata, the name
or path given to reindex) and swap to it the same way. Until then they answer from the old
collection, which stays until it is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from encoders.bundle import ModelBundle, load_bundle
from encoders.errors import BundleError
from indexer.collections import BUNDLE_REF, Collections, open_collections
from indexer.ingest_flow import IngestAborted
from indexer.qdrant_aliases import live_collection
from indexer.qdrant_store import QdrantStore
from indexer.reindex import Reindexer, ReindexError, ReindexOptions, ReindexProgress, ReindexReport
from indexer.store import StoreError
from mmsearch.v1 import search_pb2 as pb
from server.calls import CallTracker
from server.config import ServerConfig
from server.context import RequestContext
from server.errors import FailedPrecondition, InvalidArgument, RequestError, Unavailable
from server.ingest import pipeline_options
from server.services import Services, build_embedder, build_services, make_services

log = logging.getLogger("mmsearch.server")
T = TypeVar("T")
# How long the switch waits for Ingest streams in flight to end before giving up (writes are not
# held meanwhile), and then for the other writes in flight while new ones are held.
SWITCH_WAIT_SECONDS = 60.0
HOLD_WRITES_SECONDS = 10.0
# How often a replica over Qdrant checks whether the live alias moved.
FOLLOW_SECONDS = 10.0


class Swappable(Protocol):
    """The servicer, as a swap sees it."""

    services: Services
    calls: CallTracker

    def swap_services(self, new: Services) -> Services:
        """Serve `new` from now on; returns the services it replaced."""
        ...


async def swap_in(server: Swappable, new: Services, pool: ThreadPoolExecutor) -> None:
    """Serve `new`, then close the old services once every call that began on them is done."""
    old = server.swap_services(new)
    gen = server.calls.next_generation()  # no await in between: no call can slip in
    log.info("serving bundle %s (was %s)", new.bundle_id, old.bundle_id)
    await server.calls.drained(gen)
    await asyncio.get_running_loop().run_in_executor(pool, old.close)


class ReindexService:
    def __init__(self, server: Swappable) -> None:
        self.server = server
        self.config: ServerConfig = server.services.config
        self._busy = False
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmsearch-reindex")

    async def stream(
        self, ctx: RequestContext, request: pb.ReindexRequest
    ) -> AsyncIterator[pb.ReindexResponse]:
        if not request.bundle:
            raise InvalidArgument(
                "bundle is empty: name the new bundle ('tiny', 'openclip:MODEL/TAG' or a path)"
            )
        if self._busy:
            raise FailedPrecondition("a reindex is already running on this server")
        self._busy = True
        job = _Job(self, ctx, request, asyncio.get_running_loop())
        try:
            async for response in job.run():
                yield response
        except asyncio.CancelledError:
            ctx.cancel()  # the client went away: the build stops at its next check
            raise
        finally:
            with contextlib.suppress(BaseException):
                await asyncio.shield(asyncio.get_running_loop().run_in_executor(self.pool, job.cleanup))
            self._busy = False

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Parts:
    bundle: ModelBundle
    collections: Collections
    reindexer: Reindexer


class _Job:
    """One Reindex call: blocking steps on the service's thread, progress sent as it comes."""

    def __init__(
        self,
        service: ReindexService,
        ctx: RequestContext,
        request: pb.ReindexRequest,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.service, self.ctx, self.request, self.loop = service, ctx, request, loop
        self.server = service.server
        self.config = service.config
        self.queue: asyncio.Queue[ReindexProgress] = asyncio.Queue()
        self.parts: _Parts | None = None
        self.handed_over = False
        self.query_decoder: Any = None
        self.embedder: Any = None

    async def run(self) -> AsyncIterator[pb.ReindexResponse]:
        async for r in self._step(self._prepare):
            yield r
        parts = self.parts
        assert parts is not None
        async for r in self._step(parts.reindexer.build):
            yield r
        tracker = self.server.calls
        if not await tracker.pause_writes(SWITCH_WAIT_SECONDS, hold=HOLD_WRITES_SECONDS):
            parts.reindexer.report.refused = (
                f"writes in flight (an Ingest stream?) did not finish within {SWITCH_WAIT_SECONDS:.0f} s; "
                f"the new collection {parts.reindexer.new_name!r} is kept: run reindex again to switch"
            )
        else:
            old: Services | None = None
            try:
                async for r in self._step(self._settle_and_switch):
                    yield r
                if parts.reindexer.report.switched:
                    old = self._swap(parts)
            finally:
                tracker.resume_writes()
            if old is not None:
                await tracker.drained(old_generation := tracker.generation - 1)
                log.info(
                    "reindex: calls of generation %d done; closing bundle %s", old_generation, old.bundle_id
                )
                await self.loop.run_in_executor(self.service.pool, old.close)
                if self.request.drop_old:
                    if parts.collections.kind == "qdrant":
                        # Other replicas answer from the old collection until they notice the
                        # switch: give them two checks' time before it goes.
                        await asyncio.sleep(2 * FOLLOW_SECONDS)
                    async for r in self._step(self._drop_old):
                        yield r
        yield pb.ReindexResponse(report=report_to_proto(parts.reindexer.report))

    def _swap(self, parts: _Parts) -> Services:
        """Serve the new collection with the new bundle; the services replaced."""
        current = self.server.services
        new = make_services(
            self.embedder,
            parts.reindexer.new_store,
            self.config,
            query_decoder=self.query_decoder,
            metrics=current.metrics,
            load=current.load,
        )
        self.handed_over = True
        old = self.server.swap_services(new)
        self.server.calls.next_generation()  # no await since the swap: no call slipped in
        log.info("reindex: serving bundle %s (was %s)", new.bundle_id, old.bundle_id)
        return old

    async def _step(self, fn: Callable[[], None]) -> AsyncIterator[pb.ReindexResponse]:
        """Run `fn` on the service's thread, sending progress until it returns."""
        work = self.loop.run_in_executor(self.service.pool, self._guarded, fn)
        while True:
            getter = asyncio.ensure_future(self.queue.get())
            waiting: set[asyncio.Future[Any]] = {work, getter}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield pb.ReindexResponse(progress=progress_to_proto(getter.result()))
                continue
            getter.cancel()
            break
        while not self.queue.empty():
            yield pb.ReindexResponse(progress=progress_to_proto(self.queue.get_nowait()))
        work.result()

    def _guarded(self, fn: Callable[[], None]) -> None:
        """Store and pipeline failures as statuses a client can act on."""
        try:
            fn()
        except RequestError:
            raise
        except BundleError as exc:
            raise InvalidArgument(f"bundle {self.request.bundle!r}: {exc}") from None
        except ReindexError as exc:
            raise FailedPrecondition(str(exc)) from None
        except (StoreError, IngestAborted) as exc:
            raise Unavailable(f"reindex stopped: {exc}; run it again to resume") from None

    def _progress(self, p: ReindexProgress) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, p)

    def _prepare(self) -> None:
        config = self.config
        live = self.server.services.store
        if config.qdrant_url == ":memory:":
            raise FailedPrecondition("a server over qdrant-client's in-process mode cannot reindex")
        bundle = load_bundle(self.request.bundle, config.device)
        self.embedder, self.query_decoder = build_embedder(bundle, config)
        collections = open_collections(
            data_dir=config.data_dir,
            qdrant_url=config.qdrant_url,
            api_key=config.qdrant_api_key,
            collection=config.collection,
            shards=config.qdrant_shards,
            replication=config.qdrant_replication,
            write_consistency=config.qdrant_write_consistency,
        )
        options = ReindexOptions(
            allow_missing=self.request.allow_missing, pipeline=pipeline_options(config, ())
        )
        reindexer = Reindexer(
            collections,
            live,
            self.embedder,
            bundle_ref=bundle.spec.name,
            options=options,
            on_progress=self._progress,
            check=self.ctx.check,
        )
        self.parts = _Parts(bundle, collections, reindexer)

    def _settle_and_switch(self) -> None:
        assert self.parts is not None
        self.parts.reindexer.settle()
        self.parts.reindexer.switch()

    def _drop_old(self) -> None:
        assert self.parts is not None
        r = self.parts.reindexer
        self.parts.collections.drop(r.old_name)
        r.report.dropped.append(r.old_name)

    def cleanup(self) -> None:
        """What this call opened and did not hand to the server."""
        parts = self.parts
        if parts is not None and not self.handed_over:
            parts.reindexer.close()
        if not self.handed_over:
            for owned in (self.embedder, self.query_decoder):
                if owned is not None:
                    owned.close()
        if parts is not None:
            parts.collections.close()


async def follow_live(
    server: Swappable, stop: asyncio.Event, pool: ThreadPoolExecutor, interval: float = FOLLOW_SECONDS
) -> None:
    """Swap to the collection the live alias names whenever another process moves it."""
    loop = asyncio.get_running_loop()
    reported: set[str] = set()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        if stop.is_set():
            return
        services = server.services
        store = services.store
        if not isinstance(store, QdrantStore):
            return
        try:
            target = await loop.run_in_executor(
                pool, live_collection, store.client, services.config.collection
            )
            if target == store.collection:
                continue
            new = await loop.run_in_executor(pool, _services_for, services, target)
        except (StoreError, BundleError, ValueError, OSError) as exc:
            if str(exc) not in reported:  # once per cause, not every few seconds
                reported.add(str(exc))
                log.error("the live collection moved, but this replica cannot follow: %s", exc)
            continue
        except Exception:  # a flaky connection to Qdrant: try again at the next check
            log.exception("checking the live collection failed")
            continue
        await swap_in(server, new, pool)


def _services_for(current: Services, collection: str) -> Services:
    """Services over `collection` with the bundle it records."""
    assert isinstance(current.store, QdrantStore)
    meta = current.store.client.get_collection(collection).config.metadata or {}
    ref = meta.get(BUNDLE_REF)
    if not ref:
        raise StoreError(f"collection {collection!r} does not record the bundle that built it")
    bundle = load_bundle(str(ref), current.config.device)
    if bundle.bundle_id != meta.get("bundle_id"):
        raise BundleError(
            f"bundle {ref!r} loads as {bundle.bundle_id} here, but collection {collection!r} holds "
            f"vectors of {meta.get('bundle_id')}"
        )
    return build_services(current.config, bundle=bundle, metrics=current.metrics, load=current.load)


def progress_to_proto(p: ReindexProgress) -> pb.ReindexProgress:
    return pb.ReindexProgress(
        phase=p.phase.value,
        items=p.items,
        done=p.done,
        indexed=p.indexed,
        unchanged=p.unchanged,
        missing=p.missing,
        changed=p.changed,
        removed=p.removed,
        points=p.points,
        elapsed=p.elapsed,
    )


def report_to_proto(r: ReindexReport) -> pb.ReindexReport:
    return pb.ReindexReport(
        old_collection=r.old_collection,
        new_collection=r.new_collection,
        old_bundle_id=r.old_bundle_id,
        new_bundle_id=r.new_bundle_id,
        items=r.items,
        indexed=r.indexed,
        unchanged=r.unchanged,
        points=r.points,
        removed=r.removed,
        missing_count=r.missing_count,
        missing=[
            pb.MissingItem(
                source=m.source,
                media_id=m.media_id,
                modality=m.modality,
                tenant=m.namespace,
                reason=m.reason,
                stage=m.stage,
            )
            for m in r.missing
        ],
        changed=r.changed,
        switched=r.switched,
        refused=r.refused or "",
        dropped=r.dropped,
        seconds=r.seconds,
    )

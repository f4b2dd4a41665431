"""The gRPC servicer: a thin shell. It converts messages, builds the RequestContext, and runs the
services off the event loop; nothing below it reads gRPC objects."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn, TypeVar

import grpc
from google.protobuf.message import Message

from indexer.ingest_flow import IngestAborted
from indexer.inputs import ItemInput
from indexer.journal import JournalError
from indexer.store import BundleMismatchError, StoreError
from mmsearch.v1 import search_pb2 as pb
from mmsearch.v1 import search_pb2_grpc as pb_grpc
from server import convert
from server.admission import Admission, Lane, LaneLimits, RateLimiter, Rejected
from server.calls import CallTracker
from server.config import ServerConfig
from server.context import RequestContext, current_principal, request_id_var
from server.errors import DeadlineExceeded, InvalidArgument, RequestError
from server.ingest import IngestService
from server.planner import SearchOutcome
from server.queries import QueryService
from server.reindex import ReindexService
from server.services import Services
from server.write_points import write_points
from server.writes import WriteService

log = logging.getLogger("mmsearch.server")
T = TypeVar("T")
# How long a cancelled call's worker thread gets to reach its next check before we stop waiting.
STOP_WAIT_SECONDS = 5.0
MAX_MESSAGE_CHARS = 2000
HEAVY_MESSAGE_BYTES = 16 * 1024
HEAVY_RESULTS = 1000


class SearchService(pb_grpc.SearchServiceServicer):
    def __init__(self, services: Services) -> None:
        # The one reference a model swap replaces (server.reindex): `queries` and `writes` read
        # it, so a call started after the swap uses the new bundle and store.
        self.services = services
        self.ingest = IngestService(services)
        self.calls = CallTracker()  # calls in flight per services generation, and the write gate
        self.reindex = ReindexService(self)
        self.metrics = services.metrics
        config = services.config
        self.max_deadline = config.max_deadline_seconds
        # Every call is admitted into a lane (server.admission) before it takes a thread.
        self.admission = Admission(lane_limits(config), metrics=self.metrics)
        self.rate_limiter = (
            RateLimiter(
                config.rate_limit_per_second,
                config.rate_limit_burst or max(1, round(config.rate_limit_per_second)),
                metrics=self.metrics,
            )
            if config.rate_limit_per_second > 0
            else None
        )
        # One pool per lane, as many threads as the lane admits calls, so an admitted call never
        # waits for a thread. Not asyncio's default pool: at shutdown these are let go without a
        # join, so a thread inside its last bounded step cannot hold the process.
        self.pools = {
            lane: ThreadPoolExecutor(max_workers=lim.concurrency, thread_name_prefix=f"mmsearch-{lane}")
            for lane, lim in lane_limits(config).items()
        }

    @property
    def queries(self) -> QueryService:
        return self.services.queries

    @property
    def writes(self) -> WriteService:
        return self.services.writes

    def swap_services(self, new: Services) -> Services:
        """Serve `new` from now on (server.reindex closes the old ones when their calls end)."""
        old = self.services
        self.ingest = IngestService(new)
        self.services = new
        return old

    def shutdown(self) -> None:
        self.reindex.close()
        for pool in self.pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    async def _run(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        fn: Callable[[RequestContext], T],
        *,
        lane: Lane = Lane.QUERY,
    ) -> T:
        principal = current_principal()
        # No call runs past the server's cap, whatever deadline (or none) the client sent; time
        # spent waiting for admission counts.
        left = context.time_remaining()
        timeout = self.max_deadline if left is None else min(left, self.max_deadline)
        # The tenant is the authenticated key's (server.auth), never one named in the request.
        ctx = RequestContext.with_timeout(
            timeout, request_id=request_id_var.get(), method=method, tenant=principal.tenant
        )
        try:
            if self.rate_limiter is not None:
                self.rate_limiter.check(principal.key_id)
            async with self.admission.admit(lane, timeout=timeout) as waited:
                self.metrics.stage_seconds.labels("queue").observe(waited)
                capped = left is None or left > self.max_deadline
                return await self._work(context, method, fn, ctx, lane, capped=capped)
        except Rejected as exc:
            log.debug("%s refused: %s", method, exc.message)  # the access line has the status
            await _abort(context, exc.code, exc.message)

    async def _work(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        fn: Callable[[RequestContext], T],
        ctx: RequestContext,
        lane: Lane,
        *,
        capped: bool = False,
    ) -> T:
        start = time.perf_counter()
        load = self.services.load

        def call(c: RequestContext) -> T:
            if lane is Lane.WRITE:
                return fn(c)
            with load.track():  # a query's encode and store steps may be batched with others
                return fn(c)

        # Encoding and store calls block; run them on worker threads so the loop keeps serving.
        loop = asyncio.get_running_loop()
        # copy_context: the worker thread sees the request id (server.logs) like the loop does.
        work = loop.run_in_executor(self.pools[lane], contextvars.copy_context().run, call, ctx)
        try:
            result = await asyncio.shield(work)
        except asyncio.CancelledError:
            # The deadline passed or the client went away: the thread stops at its next check.
            # Wait for it (briefly) so the access log records the time really spent.
            ctx.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(work, timeout=STOP_WAIT_SECONDS)
            left = ctx.remaining()
            log.info(
                "%s stopped: %s", method, "deadline passed" if left is not None and left <= 0 else "cancelled"
            )
            raise
        except RequestError as exc:
            message = exc.message
            if isinstance(exc, DeadlineExceeded):
                if capped:
                    message += (
                        f" (the server stops every call after max_deadline_seconds={self.max_deadline:g} s)"
                    )
                # The same line as when gRPC cancels the call at its deadline (below): whichever
                # notices first, the work stopped there.
                log.info("%s stopped: deadline passed", method)
            log.info("%s -> %s: %s", method, exc.code.name, message)
            await _abort(context, exc.code, message)
        except BundleMismatchError as exc:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except StoreError as exc:
            log.exception("%s: store error", method)
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"vector store error: {exc}")
        except Exception as exc:  # the last resort: a status a client can read, never UNKNOWN
            log.exception("%s: internal error", method)
            await _abort(
                context, grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}: {exc}"
            )
        log.debug("%s ok in %.1f ms", method, (time.perf_counter() - start) * 1e3)
        return result

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        def run(ctx: RequestContext) -> pb.SearchResponse:
            query = convert.search_query_from_proto(request)
            services = self.services  # one (embedder, store) pair for the whole call, swap or not
            outcome = services.queries.search(ctx, query, convert.search_params_from_proto(request))
            return self._response(outcome, services.bundle_id)

        return await self._run(context, "Search", run, lane=_lane(request))

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchResponse:
        def run(ctx: RequestContext) -> pb.SearchResponse:
            params = convert.search_params_from_proto(request)
            services = self.services
            outcome = services.queries.recommend(
                ctx, list(request.positive_ids), list(request.negative_ids), params
            )
            return self._response(outcome, services.bundle_id)

        return await self._run(context, "Recommend", run, lane=_lane(request))

    async def MineHardNegatives(
        self, request: pb.MineRequest, context: grpc.aio.ServicerContext
    ) -> pb.MineResponse:
        def run(ctx: RequestContext) -> pb.MineResponse:
            anchors = [
                convert.query_from_proto(q, field=f"queries[{i}]") for i, q in enumerate(request.queries)
            ]
            modalities = convert.modalities_from_proto(request.modalities)
            negatives, best = self.services.mining.mine(
                ctx,
                anchors,
                list(request.positive_ids),
                k=request.k or 10,
                modalities=modalities,
                filter=convert.filter_from_proto(request.filter) if request.HasField("filter") else None,
                group_key=request.group_key,
                group=request.group,
                max_fraction_of_positive=(
                    request.max_fraction_of_positive if request.HasField("max_fraction_of_positive") else 0.95
                ),
                near_duplicate=request.near_duplicate if request.HasField("near_duplicate") else 0.98,
            )
            return pb.MineResponse(
                negatives=[convert.hit_to_proto(h) for h in negatives], positive_score=best
            )

        return await self._run(context, "MineHardNegatives", run, lane=_lane(request))

    def _response(self, outcome: SearchOutcome, bundle_id: str) -> pb.SearchResponse:
        self.metrics.observe_stages(outcome.stage_ms)
        return pb.SearchResponse(
            hits=[convert.hit_to_proto(h) for h in outcome.hits],
            bundle_id=bundle_id,
            query_modality=convert.modality_to_proto(outcome.modality),
            stage_ms={k: round(v, 3) for k, v in outcome.stage_ms.items()},
        )

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        def run(ctx: RequestContext) -> pb.EmbedResponse:
            inputs = [convert.query_from_proto(q, field=f"inputs[{i}]") for i, q in enumerate(request.inputs)]
            services = self.services
            encoded = services.queries.embed(ctx, inputs)
            return pb.EmbedResponse(
                embeddings=[
                    pb.Embedding(vector=e.vector.tolist(), modality=convert.modality_to_proto(e.modality))
                    for e in encoded
                ],
                bundle_id=services.bundle_id,
                dim=services.embedder.dim,
            )

        return await self._run(context, "Embed", run, lane=_lane(request))

    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        def run(ctx: RequestContext) -> pb.UpsertResponse:
            items = [_item_or_error(item, i) for i, item in enumerate(request.items)]
            outcomes = self.writes.upsert(ctx, items)
            for item, o in zip(items, outcomes, strict=True):
                if isinstance(item, ItemInput) and not o.error and not o.unchanged:
                    self.metrics.items_ingested.labels(item.modality.value).inc()
            results = [
                pb.ItemResult(
                    index=i,
                    ids=o.ids,
                    media_id=o.media_id,
                    unchanged=o.unchanged,
                    error=o.error or "",
                    note=o.note or "",
                )
                for i, o in enumerate(outcomes)
            ]
            failed = sum(1 for o in outcomes if o.error)
            written = sum(1 for o in outcomes if not o.error and not o.unchanged)
            return pb.UpsertResponse(results=results, written=written, failed=failed)

        return await self._run(context, "Upsert", run, lane=Lane.WRITE)

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        def run(ctx: RequestContext) -> pb.GetResponse:
            points = self.queries.get(ctx, list(request.ids), with_vectors=request.with_vectors)
            return pb.GetResponse(
                points=[
                    pb.StoredPoint(
                        point=convert.hit_to_proto(p),
                        vector=p.vector.tolist() if p.vector is not None else [],
                    )
                    for p in points
                ]
            )

        return await self._run(context, "Get", run, lane=_lane(request))

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        return await self._run(
            context,
            "Delete",
            lambda ctx: pb.DeleteResponse(deleted=self.writes.delete(ctx, request.ids)),
            lane=Lane.WRITE,
        )

    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        def run(ctx: RequestContext) -> pb.StatsResponse:
            services = self.services
            info = services.queries.stats(ctx)
            return pb.StatsResponse(
                points=info.points,
                bundle_id=info.schema.bundle_id,
                bundle_name=services.embedder.encoder.bundle.spec.name,
                dim=info.schema.dim,
                by_modality=info.by_modality,
                store=info.kind,
                max_top_k=services.config.max_top_k,
                audio=services.embedder.encoder.has_audio,
            )

        return await self._run(context, "Stats", run)

    async def Ingest(
        self, request_iterator: AsyncIterator[pb.IngestRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.IngestResponse]:
        # A bulk ingest runs as long as its library takes: no admission lane or deadline cap (the
        # ingest service runs a bounded number of streams), only the client's own deadline.
        principal = current_principal()
        ctx = RequestContext.with_timeout(
            context.time_remaining(),
            request_id=request_id_var.get(),
            method="Ingest",
            tenant=principal.tenant,
        )
        try:
            if self.rate_limiter is not None:
                self.rate_limiter.check(principal.key_id)
            async for response in self.ingest.stream(ctx, request_iterator):
                yield response
        except RequestError as exc:
            log.info("Ingest -> %s: %s", exc.code.name, exc.message)
            await _abort(context, exc.code, exc.message)
        except BundleMismatchError as exc:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except (StoreError, IngestAborted, JournalError) as exc:
            log.exception("Ingest stopped")
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"ingest stopped: {exc}")
        except Exception as exc:  # the last resort: a status a client can read, never UNKNOWN
            log.exception("Ingest: internal error")
            await _abort(
                context, grpc.StatusCode.INTERNAL, f"internal error in Ingest: {type(exc).__name__}: {exc}"
            )

    async def WritePoints(
        self, request: pb.WritePointsRequest, context: grpc.aio.ServicerContext
    ) -> pb.WritePointsResponse:
        return await self._run(
            context, "WritePoints", lambda ctx: write_points(self.services, ctx, request), lane=Lane.WRITE
        )

    async def Reindex(
        self, request: pb.ReindexRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReindexResponse]:
        # A reindex runs as long as the index takes to rebuild: only the client's own deadline.
        principal = current_principal()
        ctx = RequestContext.with_timeout(
            context.time_remaining(),
            request_id=request_id_var.get(),
            method="Reindex",
            tenant=principal.tenant,
        )
        try:
            async for response in self.reindex.stream(ctx, request):
                yield response
        except RequestError as exc:
            log.info("Reindex -> %s: %s", exc.code.name, exc.message)
            await _abort(context, exc.code, exc.message)
        except Exception as exc:  # the last resort: a status a client can read, never UNKNOWN
            log.exception("Reindex: internal error")
            await _abort(
                context, grpc.StatusCode.INTERNAL, f"internal error in Reindex: {type(exc).__name__}: {exc}"
            )


def lane_limits(config: ServerConfig) -> dict[Lane, LaneLimits]:
    return {
        Lane.QUERY: LaneLimits(
            config.max_concurrent_rpcs, config.max_queued_rpcs, "max_concurrent_rpcs", "max_queued_rpcs"
        ),
        Lane.HEAVY: LaneLimits(
            config.max_concurrent_heavy_rpcs,
            config.max_queued_heavy_rpcs,
            "max_concurrent_heavy_rpcs",
            "max_queued_heavy_rpcs",
        ),
        Lane.WRITE: LaneLimits(
            config.max_concurrent_writes,
            config.max_queued_heavy_rpcs,
            "max_concurrent_writes",
            "max_queued_heavy_rpcs",
        ),
    }


def _lane(request: Message) -> Lane:
    """The heavy lane for a query likely to cost far more than an ordinary one: media, long
    texts, big filters or id lists (all of which make the message large), or a very wide result
    page. On a small machine these queue behind each other instead of taking every core from the
    ordinary queries (measured with bench/hostile.py)."""
    if request.ByteSize() > HEAVY_MESSAGE_BYTES:
        return Lane.HEAVY
    top_k = getattr(request, "top_k", 0) or getattr(request, "k", 0)
    return Lane.HEAVY if top_k * max(1, getattr(request, "group_size", 1)) > HEAVY_RESULTS else Lane.QUERY


def _item_or_error(item: pb.Item, index: int) -> ItemInput | InvalidArgument:
    # A malformed item fails alone: the API promises each item its own outcome.
    try:
        return convert.item_from_proto(item, index)
    except InvalidArgument as exc:
        return exc


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    # gRPC drops a call whose status message passes 16 KiB of metadata: keep it well under.
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + " ... (truncated)"
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

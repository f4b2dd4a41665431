"""The gRPC servicer: a thin shell. It converts messages, builds the RequestContext, and runs the
services off the event loop; nothing below it reads gRPC objects."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn, TypeVar

import grpc
from google.protobuf.message import Message

from indexer.inputs import ItemInput
from indexer.store import BundleMismatchError, StoreError
from mmsearch.v1 import search_pb2 as pb
from mmsearch.v1 import search_pb2_grpc as pb_grpc
from server import convert
from server.context import RequestContext, request_id_var
from server.errors import InvalidArgument, RequestError
from server.planner import SearchOutcome
from server.services import Services

log = logging.getLogger("mmsearch.server")
T = TypeVar("T")
# How long a cancelled call's worker thread gets to reach its next check before we stop waiting.
STOP_WAIT_SECONDS = 5.0
MAX_MESSAGE_CHARS = 2000
HEAVY_MESSAGE_BYTES = 16 * 1024
HEAVY_RESULTS = 1000


class SearchService(pb_grpc.SearchServiceServicer):
    def __init__(self, services: Services, *, workers: int = 8, heavy_workers: int = 1) -> None:
        self.services = services
        self.queries = services.queries
        self.writes = services.writes
        # Calls run on their own pool rather than asyncio's default one: at shutdown it is let go
        # without a join, so a thread inside its last bounded step cannot hold the process.
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mmsearch-call")
        # Heavy calls (writes, media, long texts, large messages) share a smaller pool of their
        # own: on a small machine they queue behind each other instead of taking every core from
        # the ordinary queries (measured with bench/hostile.py).
        self.heavy_executor = ThreadPoolExecutor(
            max_workers=heavy_workers, thread_name_prefix="mmsearch-heavy"
        )

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.heavy_executor.shutdown(wait=False, cancel_futures=True)

    async def _run(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        fn: Callable[[RequestContext], T],
        *,
        heavy: bool = False,
    ) -> T:
        ctx = RequestContext.with_timeout(
            context.time_remaining(), request_id=request_id_var.get(), method=method
        )
        start = time.perf_counter()
        # Encoding and store calls block; run them on worker threads so the loop keeps serving.
        loop = asyncio.get_running_loop()
        # copy_context: the worker thread sees the request id (server.logs) like the loop does.
        pool = self.heavy_executor if heavy else self.executor
        work = loop.run_in_executor(pool, contextvars.copy_context().run, fn, ctx)
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
            log.info("%s -> %s: %s", method, exc.code.name, exc.message)
            await _abort(context, exc.code, exc.message)
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
            return self._response(self.queries.search(ctx, query, convert.search_params_from_proto(request)))

        return await self._run(context, "Search", run, heavy=_heavy(request))

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchResponse:
        def run(ctx: RequestContext) -> pb.SearchResponse:
            params = convert.search_params_from_proto(request)
            return self._response(
                self.queries.recommend(ctx, list(request.positive_ids), list(request.negative_ids), params)
            )

        return await self._run(context, "Recommend", run, heavy=_heavy(request))

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

        return await self._run(context, "MineHardNegatives", run, heavy=_heavy(request))

    def _response(self, outcome: SearchOutcome) -> pb.SearchResponse:
        return pb.SearchResponse(
            hits=[convert.hit_to_proto(h) for h in outcome.hits],
            bundle_id=self.services.bundle_id,
            query_modality=convert.modality_to_proto(outcome.modality),
            stage_ms={k: round(v, 3) for k, v in outcome.stage_ms.items()},
        )

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        def run(ctx: RequestContext) -> pb.EmbedResponse:
            inputs = [convert.query_from_proto(q, field=f"inputs[{i}]") for i, q in enumerate(request.inputs)]
            encoded = self.queries.embed(ctx, inputs)
            return pb.EmbedResponse(
                embeddings=[
                    pb.Embedding(vector=e.vector.tolist(), modality=convert.modality_to_proto(e.modality))
                    for e in encoded
                ],
                bundle_id=self.services.bundle_id,
                dim=self.services.embedder.dim,
            )

        return await self._run(context, "Embed", run, heavy=_heavy(request))

    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        def run(ctx: RequestContext) -> pb.UpsertResponse:
            outcomes = self.writes.upsert(
                ctx, [_item_or_error(item, i) for i, item in enumerate(request.items)]
            )
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

        return await self._run(context, "Upsert", run, heavy=True)

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

        return await self._run(context, "Get", run)

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        return await self._run(
            context, "Delete", lambda ctx: pb.DeleteResponse(deleted=self.writes.delete(ctx, request.ids))
        )

    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        def run(ctx: RequestContext) -> pb.StatsResponse:
            info = self.queries.stats(ctx)
            return pb.StatsResponse(
                points=info.points,
                bundle_id=info.schema.bundle_id,
                bundle_name=self.services.embedder.encoder.bundle.spec.name,
                dim=info.schema.dim,
                by_modality=info.by_modality,
                store=info.kind,
                max_top_k=self.services.config.max_top_k,
                audio=self.services.embedder.encoder.has_audio,
            )

        return await self._run(context, "Stats", run)


def _heavy(request: Message) -> bool:
    """Whether a call is likely to cost far more than an ordinary query: media, long texts, big
    filters or id lists (all of which make the message large), or a very wide result page."""
    if request.ByteSize() > HEAVY_MESSAGE_BYTES:
        return True
    top_k = getattr(request, "top_k", 0) or getattr(request, "k", 0)
    return top_k * max(1, getattr(request, "group_size", 1)) > HEAVY_RESULTS


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

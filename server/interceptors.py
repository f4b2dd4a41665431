"""Server interceptors: a request id on every call, and one log line per call with its outcome."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from server.context import current_principal, request_id_var
from server.metrics import Metrics

log = logging.getLogger("mmsearch.access")
REQUEST_ID = "x-request-id"


class RequestIdInterceptor(grpc.aio.ServerInterceptor):
    """Takes the caller's x-request-id (or makes one) and returns it (trailing metadata on every
    outcome, initial metadata on an answer), logs one line per call (method, status,
    milliseconds, tenant; structured fields for JSON logs), and records its latency by method
    and status code in `metrics`. Streaming calls (Ingest, health Watch) get the same."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        metadata = dict(details.invocation_metadata or ())
        call = _CallLog(str(metadata.get(REQUEST_ID) or uuid.uuid4().hex), details.method, self.metrics)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                call.unary(handler.unary_unary),
                request_deserializer=_tolerant(handler.request_deserializer)
                if handler.request_deserializer is not None
                else None,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                call.unary(handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                call.streaming(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                call.streaming(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class _CallLog:
    """One call's id, its access-log line and its latency sample, around its handler."""

    def __init__(self, request_id: str, method: str, metrics: Metrics | None) -> None:
        self.request_id = request_id
        self.method = method
        self.short = method.rsplit("/", 1)[-1]
        self.metrics = metrics

    def begin(self, context: grpc.aio.ServicerContext) -> float:
        # Every log line of the call carries the id (server.logs), the servicer's included.
        request_id_var.set(self.request_id)
        context.set_trailing_metadata(((REQUEST_ID, self.request_id),))
        return time.perf_counter()

    def end(self, context: grpc.aio.ServicerContext, start: float, code: str) -> None:
        seconds = time.perf_counter() - start
        # The principal is set inside the call (server.auth), in this same task's context.
        tenant = current_principal().tenant
        log.info(
            "%s %s %s %.1f ms tenant=%s",
            self.request_id,
            self.method,
            code,
            seconds * 1e3,
            tenant,
            extra={"method": self.short, "code": code, "ms": round(seconds * 1e3, 3)},
        )
        if self.metrics is not None:
            self.metrics.rpc_seconds.labels(self.short, code).observe(seconds)

    def unary(self, inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """A handler with one response (unary or client-streaming requests)."""

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = self.begin(context)
            code = "OK"
            try:
                if isinstance(request, Malformed):
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{self.method}: the request is not a valid message ({request.reason})",
                    )
                response = await inner(request, context)
                # Sent once the answer is ready: a refused or failed call costs no extra round
                # of sending before its status (which carries the id in its trailers).
                await context.send_initial_metadata(((REQUEST_ID, self.request_id),))
                return response
            except asyncio.CancelledError:
                code = "CANCELLED"  # the client went away or the deadline passed mid-call
                raise
            except BaseException:
                code = _code(context)
                raise
            finally:
                self.end(context, start, code)

        return wrapped

    def streaming(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        """A handler with a stream of responses: an async generator, or a coroutine that
        writes its responses with context.write."""

        if inspect.isasyncgenfunction(inner):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                start = self.begin(context)
                await context.send_initial_metadata(((REQUEST_ID, self.request_id),))
                code = "OK"
                try:
                    async for response in inner(request, context):
                        yield response
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                except BaseException:
                    code = _code(context)
                    raise
                finally:
                    self.end(context, start, code)

            return stream

        async def writes(request: Any, context: grpc.aio.ServicerContext) -> None:
            start = self.begin(context)
            await context.send_initial_metadata(((REQUEST_ID, self.request_id),))
            code = "OK"
            try:
                await inner(request, context)
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except BaseException:
                code = _code(context)
                raise
            finally:
                self.end(context, start, code)

        return writes


def _code(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    return code.name if code is not None else "ERROR"


@dataclass(frozen=True)
class Malformed:
    """Stands in for a request whose bytes did not parse, so the call can answer
    INVALID_ARGUMENT instead of gRPC's own INTERNAL / UNKNOWN for a deserializer failure."""

    reason: str


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:  # corrupt bytes, or nesting past protobuf's recursion limit
            return Malformed(str(exc)[:200] or type(exc).__name__)

    return parse

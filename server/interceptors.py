"""Server interceptors: a request id on every call, and one log line per call with its outcome."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from server.context import current_principal, request_id_var
from server.metrics import Metrics

log = logging.getLogger("mmsearch.access")
REQUEST_ID = "x-request-id"


class RequestIdInterceptor(grpc.aio.ServerInterceptor):
    """Takes the caller's x-request-id (or makes one), returns it in the initial metadata, and
    logs method, status, milliseconds and tenant for each unary call (structured fields for JSON
    logs), and records its latency by method and status code in `metrics`."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # health Watch and reflection streams pass through untouched
        inner = handler.unary_unary
        deserialize = handler.request_deserializer
        metadata = dict(details.invocation_metadata or ())
        request_id = str(metadata.get(REQUEST_ID) or uuid.uuid4().hex)
        method = details.method
        short = method.rsplit("/", 1)[-1]
        latency = self.metrics.rpc_seconds if self.metrics is not None else None

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # Every log line of the call carries the id (server.logs), the servicer's included.
            request_id_var.set(request_id)
            start = time.perf_counter()
            # The id goes back with the status (every outcome) and, for an answer, ahead of it in
            # the initial metadata: sent once the answer is ready, so a refused call costs no
            # extra round of sending before its status.
            context.set_trailing_metadata(((REQUEST_ID, request_id),))
            code = "OK"
            try:
                if isinstance(request, Malformed):
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{method}: the request is not a valid message ({request.reason})",
                    )
                response = await inner(request, context)
                await context.send_initial_metadata(((REQUEST_ID, request_id),))
                return response
            except asyncio.CancelledError:
                code = "CANCELLED"  # the client went away or the deadline passed mid-call
                raise
            except BaseException:
                code = context.code().name if context.code() is not None else "ERROR"
                raise
            finally:
                seconds = time.perf_counter() - start
                # The principal is set inside the call (server.auth), in this same task's context.
                tenant = current_principal().tenant
                log.info(
                    "%s %s %s %.1f ms tenant=%s",
                    request_id,
                    method,
                    code,
                    seconds * 1e3,
                    tenant,
                    extra={"method": short, "code": code, "ms": round(seconds * 1e3, 3)},
                )
                if latency is not None:
                    latency.labels(short, code).observe(seconds)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=_tolerant(deserialize) if deserialize is not None else None,
            response_serializer=handler.response_serializer,
        )


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

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

from server.context import request_id_var

log = logging.getLogger("mmsearch.access")
REQUEST_ID = "x-request-id"


class RequestIdInterceptor(grpc.aio.ServerInterceptor):
    """Takes the caller's x-request-id (or makes one), returns it in the initial metadata, and
    logs method, status and milliseconds for each unary call."""

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

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # Every log line of the call carries the id (server.logs), the servicer's included.
            request_id_var.set(request_id)
            start = time.perf_counter()
            await context.send_initial_metadata(((REQUEST_ID, request_id),))
            code = "OK"
            try:
                if isinstance(request, Malformed):
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{method}: the request is not a valid message ({request.reason})",
                    )
                return await inner(request, context)
            except asyncio.CancelledError:
                code = "CANCELLED"  # the client went away or the deadline passed mid-call
                raise
            except BaseException:
                code = context.code().name if context.code() is not None else "ERROR"
                raise
            finally:
                ms = (time.perf_counter() - start) * 1e3
                log.info("%s %s %s %.1f ms", request_id, method, code, ms)

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

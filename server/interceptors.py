"""Server interceptors: a request id on every call, and one log line per call with its outcome."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

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
                return await inner(request, context)
            except BaseException:
                code = context.code().name if context.code() is not None else "ERROR"
                raise
            finally:
                ms = (time.perf_counter() - start) * 1e3
                log.info("%s %s %s %.1f ms", request_id, method, code, ms)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

"""Calls in flight, by services generation, and the gate that holds writes during a switch.

A model swap replaces the servicer's services (one reference). Calls that began before it may
still be using the old embedder and store: the tracker counts calls per generation, so the old
services are closed only once every call of their generation has finished. Write calls (the
methods that need the write scope) pass a gate the reindex closes for its last catch-up and the
switch: a write arriving then waits (its deadline still runs) and goes to the new index after.

Everything here runs on the event loop; the counters need no lock.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server.auth import SERVICE, required_scope, rewrap_handler
from server.keys import Scope

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
# Not tracked: the call that performs the swap would wait for itself.
UNTRACKED = frozenset({SERVICE + "Reindex"})


class CallTracker:
    def __init__(self) -> None:
        self.generation = 0
        self._calls: dict[int, int] = {}
        self._writes = 0
        self._streams = 0  # writes that stream their requests (Ingest): they may last long
        self._paused = False
        self._event: asyncio.Event | None = None

    # -- waiting on the counters ----------------------------------------------------------

    def _changed(self) -> None:
        if self._event is not None:
            event, self._event = self._event, None
            event.set()

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            if self._event is None:
                self._event = asyncio.Event()
            await self._event.wait()

    # -- calls ----------------------------------------------------------------------------

    async def enter(self, *, write: bool, stream: bool = False) -> int:
        if write:
            await self._until(lambda: not self._paused)
            self._writes += 1
            self._streams += stream
        gen = self.generation
        self._calls[gen] = self._calls.get(gen, 0) + 1
        return gen

    def exit(self, gen: int, *, write: bool, stream: bool = False) -> None:
        self._calls[gen] -= 1
        if write:
            self._writes -= 1
            self._streams -= stream
        self._changed()

    def in_flight(self, gen: int) -> int:
        return self._calls.get(gen, 0)

    # -- the switch -----------------------------------------------------------------------

    async def pause_writes(self, timeout: float, *, hold: float = 10.0) -> bool:
        """Hold new writes and wait for those in flight. Streamed writes (Ingest) are waited for
        first, up to `timeout` seconds, without holding anything (a held write waits with its
        deadline running); then new writes are held while the unary ones in flight finish, up
        to `hold` seconds. False, with writes flowing, when either wait runs out."""
        try:
            await asyncio.wait_for(self._until(lambda: self._streams == 0), timeout)
        except TimeoutError:
            return False
        self._paused = True
        try:
            await asyncio.wait_for(self._until(lambda: self._writes == 0), hold)
        except TimeoutError:
            self.resume_writes()
            return False
        return True

    def resume_writes(self) -> None:
        self._paused = False
        self._changed()

    def next_generation(self) -> int:
        """Start a new generation (right after the swap); the one that ended."""
        self.generation += 1
        return self.generation - 1

    async def drained(self, gen: int) -> None:
        """Wait until no call of generation `gen` is in flight."""
        await self._until(lambda: self._calls.get(gen, 0) == 0)


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Counts every SearchService call in the tracker and passes writes through its gate."""

    def __init__(self, tracker: CallTracker) -> None:
        self.tracker = tracker

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method = details.method
        if handler is None or not method.startswith(SERVICE) or method in UNTRACKED:
            return handler
        write = required_scope(method) == Scope.WRITE
        return _tracked(handler, self.tracker, write=write, streamed=write and handler.request_streaming)


def _tracked(
    handler: grpc.RpcMethodHandler, tracker: CallTracker, *, write: bool, streamed: bool
) -> grpc.RpcMethodHandler:
    def bind(behavior: Callable[..., Any], streams: bool) -> Callable[..., Any]:
        if streams and inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                gen = await tracker.enter(write=write, stream=streamed)
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    tracker.exit(gen, write=write, stream=streamed)

            return stream

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            gen = await tracker.enter(write=write, stream=streamed)
            try:
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                tracker.exit(gen, write=write, stream=streamed)

        return call

    return rewrap_handler(handler, bind)

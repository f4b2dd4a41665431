"""Admission control: a bound on concurrent calls per lane and on the queue behind them, and
per-key rate limits. Excess is answered at once with RESOURCE_EXHAUSTED; nothing waits without
bound.

Lanes keep costs apart on a small machine: ordinary queries (`query`), queries that cost far
more than one (media, long texts, wide pages: `heavy`), and writes (`write`). A heavy query
never waits behind an ingest, and neither takes every core from ordinary queries.

Everything here runs on the event loop (one thread): no locks.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum

from server.errors import DeadlineExceeded, RequestError, ResourceExhausted, Unavailable
from server.metrics import Metrics

# Buckets kept for this many distinct keys; the least recently used are forgotten (a key
# seen again starts with a full bucket), so memory stays bounded whatever keys arrive.
MAX_RATE_KEYS = 10_000


class Lane(StrEnum):
    QUERY = "query"
    HEAVY = "heavy"
    WRITE = "write"


@dataclass(frozen=True)
class LaneLimits:
    concurrency: int
    queue: int
    # The settings that set them, named in refusals so an operator knows what to raise.
    concurrency_setting: str
    queue_setting: str


class Rejected(RequestError):
    """Refused before any work; `reason` labels the rejection metric."""

    def __init__(self, error: RequestError, reason: str) -> None:
        super().__init__(error.message)
        self.code = error.code
        self.reason = reason


@dataclass
class _LaneState:
    limits: LaneLimits
    active: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class Admission:
    """Admits calls into lanes. `admit` yields the seconds the call waited in the queue."""

    def __init__(self, lanes: dict[Lane, LaneLimits], *, metrics: Metrics | None = None) -> None:
        for lane, limits in lanes.items():
            if limits.concurrency < 1 or limits.queue < 0:
                raise ValueError(f"lane {lane}: concurrency must be >= 1 and queue >= 0")
        self._lanes = {lane: _LaneState(limits) for lane, limits in lanes.items()}
        self.metrics = metrics
        self.closing = False

    def active(self, lane: Lane) -> int:
        return self._lanes[lane].active

    def queued(self, lane: Lane) -> int:
        return len(self._waiters(lane))

    def busy(self) -> bool:
        """Whether any call is running or queued, in any lane."""
        return any(s.active or s.waiters for s in self._lanes.values())

    def close(self) -> None:
        """Refuse every new call from now on (shutdown); admitted and queued calls go on."""
        self.closing = True

    @asynccontextmanager
    async def admit(self, lane: Lane, *, timeout: float | None = None) -> AsyncIterator[float]:
        """Run the body as one of the lane's calls. Raises Rejected at once when the lane and
        its queue are full or the server is shutting down, and when `timeout` (the call's time
        left) runs out in the queue."""
        state = self._lanes[lane]
        waiters = self._waiters(lane)
        if self.closing:
            raise self._reject(
                Unavailable("the server is shutting down: retry on another replica"), "shutting_down"
            )
        waited = 0.0
        if state.active < state.limits.concurrency and not waiters:
            state.active += 1
        elif len(waiters) < state.limits.queue:
            waited = await self._wait(lane, state, waiters, timeout)
        else:
            lim = state.limits
            raise self._reject(
                ResourceExhausted(
                    f"server busy: {state.active} {lane} calls running and {len(waiters)} queued, the "
                    f"limits ({lim.concurrency_setting}={lim.concurrency}, {lim.queue_setting}={lim.queue}); "
                    "retry with backoff"
                ),
                "queue_full" if lim.queue else "busy",
            )
        self._gauges(lane)
        try:
            yield waited
        finally:
            self._release(lane, state, waiters)

    async def _wait(
        self, lane: Lane, state: _LaneState, waiters: deque[asyncio.Future[None]], timeout: float | None
    ) -> float:
        start = time.monotonic()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(turn)
        self._gauges(lane)
        try:
            await asyncio.wait_for(asyncio.shield(turn), timeout)
        except TimeoutError:
            if turn.done():  # the slot came as the time ran out: hand it on
                self._release(lane, state, waiters)
            else:
                turn.cancel()
                waiters.remove(turn)
            self._gauges(lane)
            raise self._reject(
                DeadlineExceeded(
                    f"the call's deadline passed after {time.monotonic() - start:.2f} s waiting in the "
                    f"{lane} queue behind {state.active} running calls; retry later or with a longer deadline"
                ),
                "deadline_in_queue",
            ) from None
        except asyncio.CancelledError:  # the client went away while queued
            if turn.done():
                self._release(lane, state, waiters)
            else:
                turn.cancel()
                waiters.remove(turn)
            self._gauges(lane)
            raise
        return time.monotonic() - start

    def _release(self, lane: Lane, state: _LaneState, waiters: deque[asyncio.Future[None]]) -> None:
        # The slot passes straight to the oldest waiter, so a queued call never loses its turn
        # to one that arrives later.
        while waiters:
            turn = waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                self._gauges(lane)
                return
        state.active -= 1
        self._gauges(lane)

    def _waiters(self, lane: Lane) -> deque[asyncio.Future[None]]:
        return self._lanes[lane].waiters

    def _gauges(self, lane: Lane) -> None:
        if self.metrics is not None:
            self.metrics.in_flight.labels(lane.value).set(self._lanes[lane].active)
            self.metrics.queue_depth.labels(lane.value).set(len(self._waiters(lane)))

    def _reject(self, error: RequestError, reason: str) -> Rejected:
        if self.metrics is not None:
            self.metrics.rejections.labels(reason).inc()
        return Rejected(error, reason)


class RateLimiter:
    """A token bucket per key: `rate` calls a second on average, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int, *, metrics: Metrics | None = None) -> None:
        if not (math.isfinite(rate) and rate > 0) or burst < 1:
            raise ValueError("rate must be > 0 calls/s and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.metrics = metrics
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def check(self, key: str, *, now: float | None = None) -> None:
        """Take one token for `key`, or raise Rejected (RESOURCE_EXHAUSTED) saying when to retry."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._remember(key, tokens, now)
            retry_ms = math.ceil((1.0 - tokens) / self.rate * 1e3)
            who = f"key {key}" if key else "this server's callers"
            if self.metrics is not None:
                self.metrics.rejections.labels("rate_limited").inc()
            raise Rejected(
                ResourceExhausted(
                    f"rate limit exceeded for {who}: {self.rate:g} calls/s, bursts of {self.burst} "
                    f"(rate_limit_per_second, rate_limit_burst); retry in {retry_ms} ms"
                ),
                "rate_limited",
            )
        self._remember(key, tokens - 1.0, now)

    def _remember(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > MAX_RATE_KEYS:
            self._buckets.popitem(last=False)

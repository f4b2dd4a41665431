"""Admission control on the event loop: bounded lanes and queues, refusals at once that name the
setting, queue waits bounded by the call's deadline, shutdown, and per-key rate limits."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from server.admission import MAX_RATE_KEYS, Admission, Lane, LaneLimits, RateLimiter, Rejected
from server.metrics import Metrics


def lanes(concurrency: int = 2, queue: int = 1) -> dict[Lane, LaneLimits]:
    return {
        Lane.QUERY: LaneLimits(concurrency, queue, "max_concurrent_rpcs", "max_queued_rpcs"),
        Lane.WRITE: LaneLimits(1, 0, "max_concurrent_writes", "max_queued_heavy_rpcs"),
    }


def rejections(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("mmsearch_rejections_total", {"reason": reason})
    return value or 0.0


async def hold(admission: Admission, lane: Lane, release: asyncio.Event, log: list[str], name: str) -> None:
    async with admission.admit(lane, timeout=5):
        log.append(f"start {name}")
        await release.wait()
    log.append(f"end {name}")


def test_a_full_lane_and_queue_refuse_at_once_naming_the_settings() -> None:
    async def scenario() -> None:
        metrics = Metrics()
        admission = Admission(lanes(concurrency=2, queue=1), metrics=metrics)
        release, log = asyncio.Event(), []
        running = [asyncio.create_task(hold(admission, Lane.QUERY, release, log, n)) for n in "abc"]
        await asyncio.sleep(0.05)
        assert log == ["start a", "start b"]  # c waits in the queue
        assert (admission.active(Lane.QUERY), admission.queued(Lane.QUERY)) == (2, 1)
        assert metrics.registry.get_sample_value("mmsearch_queue_depth", {"lane": "query"}) == 1
        start = time.perf_counter()
        with pytest.raises(Rejected) as exc:
            async with admission.admit(Lane.QUERY, timeout=5):
                pass
        assert time.perf_counter() - start < 0.05
        assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_concurrent_rpcs=2" in exc.value.message and "max_queued_rpcs=1" in exc.value.message
        assert rejections(metrics, "queue_full") == 1
        async with admission.admit(Lane.WRITE, timeout=5):  # another lane is not held up
            with pytest.raises(Rejected) as busy:
                async with admission.admit(Lane.WRITE, timeout=5):
                    pass
        assert "max_concurrent_writes=1" in busy.value.message and rejections(metrics, "busy") == 1
        release.set()
        await asyncio.gather(*running)
        assert log.index("start c") > log.index("start a")  # the queued call got the freed slot
        assert not admission.busy()

    asyncio.run(scenario())


def test_queued_calls_keep_their_order_and_leave_when_their_deadline_passes() -> None:
    async def scenario() -> None:
        metrics = Metrics()
        admission = Admission(lanes(concurrency=1, queue=3), metrics=metrics)
        release, log = asyncio.Event(), []
        first = asyncio.create_task(hold(admission, Lane.QUERY, release, log, "a"))
        await asyncio.sleep(0.01)
        with pytest.raises(Rejected) as exc:
            async with admission.admit(Lane.QUERY, timeout=0.05):
                pass
        assert exc.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "queue" in exc.value.message
        assert admission.queued(Lane.QUERY) == 0 and rejections(metrics, "deadline_in_queue") == 1
        queued = [asyncio.create_task(hold(admission, Lane.QUERY, release, log, n)) for n in "bcd"]
        await asyncio.sleep(0.01)
        queued[1].cancel()  # a client that goes away leaves the queue
        await asyncio.sleep(0.01)
        assert admission.queued(Lane.QUERY) == 2
        release.set()
        await asyncio.gather(first, queued[0], queued[2])
        assert [e for e in log if e.startswith("start")] == ["start a", "start b", "start d"]
        assert not admission.busy()

    asyncio.run(scenario())


def test_a_closing_server_refuses_new_calls_as_unavailable() -> None:
    async def scenario() -> None:
        admission = Admission(lanes())
        admission.close()
        with pytest.raises(Rejected) as exc:
            async with admission.admit(Lane.QUERY):
                pass
        assert exc.value.code == grpc.StatusCode.UNAVAILABLE and "shutting down" in exc.value.message

    asyncio.run(scenario())


def test_lanes_need_room() -> None:
    with pytest.raises(ValueError):
        Admission({Lane.QUERY: LaneLimits(0, 1, "a", "b")})


def test_rate_limits_are_per_key_with_bursts_and_say_when_to_retry() -> None:
    metrics = Metrics()
    limiter = RateLimiter(rate=2.0, burst=3, metrics=metrics)
    t = 100.0
    for _ in range(3):
        limiter.check("k1", now=t)
    with pytest.raises(Rejected) as exc:
        limiter.check("k1", now=t)
    assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "key k1" in exc.value.message and "retry in 500 ms" in exc.value.message
    assert "rate_limit_per_second" in exc.value.message
    limiter.check("k2", now=t)  # another key has its own bucket
    limiter.check("k1", now=t + 0.5)  # half a second refills one token at 2/s
    with pytest.raises(Rejected):
        limiter.check("k1", now=t + 0.5)
    limiter.check("k1", now=t + 10)  # refills up to the burst, no further
    limiter.check("k1", now=t + 10)
    limiter.check("k1", now=t + 10)
    with pytest.raises(Rejected):
        limiter.check("k1", now=t + 10)
    assert rejections(metrics, "rate_limited") == 3
    with pytest.raises(Rejected) as keyless:
        for _ in range(10):
            limiter.check("", now=t)
    assert "this server's callers" in keyless.value.message


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    for i in range(MAX_RATE_KEYS + 50):
        limiter.check(f"key-{i}", now=0.0)
    assert len(limiter._buckets) == MAX_RATE_KEYS
    with pytest.raises(ValueError):
        RateLimiter(rate=0.0, burst=1)

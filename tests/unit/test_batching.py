"""Micro-batching across threads: a lone caller runs at once, concurrent callers share a batch,
waits are bounded, a bad input fails only its own caller, and batched store queries answer
exactly what unbatched ones do."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from indexer.edge_store import EdgeStore
from indexer.query_plan import DenseQuery, QueryPlan
from indexer.schema import CollectionSchema, PointPayload, PointRecord, StoredPoint, point_id
from server.batching import BatchingStore, Load, MicroBatcher


class Recorder:
    """A batch function that doubles its inputs and records each batch (and its thread)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: list[int] = []
        self.gate = gate
        self.started = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.append(threading.get_ident())
        self.started.set()
        if self.gate is not None:
            self.gate.wait(5)
        if any(i < 0 for i in items):
            raise ValueError(f"negative input in {items}")
        return [2 * i for i in items]


def in_threads(fn: Callable[[int], list[int]], args: list[int]) -> list[list[int] | BaseException]:
    def safe(a: int) -> list[int] | BaseException:
        try:
            return fn(a)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(safe, args))


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    until = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < until, "timed out"
        time.sleep(0.005)


def test_a_lone_caller_runs_at_once_on_its_own_thread() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch=8, max_wait=5.0, load=Load())
    start = time.perf_counter()
    assert batcher.run([1, 2, 3]) == [2, 4, 6]
    assert time.perf_counter() - start < 1.0  # the 5 s wait is for callers that are coming
    assert rec.threads == [threading.get_ident()]
    assert batcher.run([]) == []


def test_callers_arriving_during_a_batch_share_the_next_one() -> None:
    gate = threading.Event()
    rec = Recorder(gate)
    batcher = MicroBatcher(rec, max_batch=64, max_wait=0.0)
    with ThreadPoolExecutor(9) as pool:
        first = pool.submit(batcher.run, [100])
        assert rec.started.wait(5)
        rest = [pool.submit(batcher.run, [i, i + 1000]) for i in range(8)]
        wait_for(lambda: batcher.waiting == 8)  # all eight are queued behind the running batch
        gate.set()
        assert first.result(5) == [200]
        for i, f in enumerate(rest):
            assert f.result(5) == [2 * i, 2 * (i + 1000)]  # each caller gets its own results, in order
    assert len(rec.batches) == 2
    assert sorted(rec.batches[1]) == sorted(x for i in range(8) for x in (i, i + 1000))


def test_batches_stay_within_max_batch_and_a_big_caller_runs_alone() -> None:
    gate = threading.Event()
    rec = Recorder(gate)
    batcher = MicroBatcher(rec, max_batch=4, max_wait=0.0)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.run, [0])
        assert rec.started.wait(5)
        small = [pool.submit(batcher.run, [i, i]) for i in range(1, 6)]
        big = pool.submit(batcher.run, list(range(10, 20)))
        wait_for(lambda: batcher.waiting == 6)
        gate.set()
        first.result(5)
        assert all(f.result(5) for f in small)
        assert big.result(5) == [2 * i for i in range(10, 20)]
    assert [b for b in rec.batches if len(b) > 4] == [list(range(10, 20))]
    assert sum(len(b) for b in rec.batches) == 1 + 10 + 10


def test_a_leader_waits_for_calls_in_flight_but_no_longer_than_max_wait() -> None:
    rec = Recorder()
    load = Load()
    batcher = MicroBatcher(rec, max_batch=8, max_wait=2.0, load=load)
    both_in_flight = threading.Barrier(2)

    def call(x: int, delay: float) -> list[int]:
        with load.track():
            both_in_flight.wait(5)
            time.sleep(delay)
            return batcher.run([x])

    with ThreadPoolExecutor(2) as pool:
        start = time.perf_counter()
        a, b = pool.submit(call, 1, 0.0), pool.submit(call, 2, 0.1)
        assert (a.result(5), b.result(5)) == ([2], [4])
        elapsed = time.perf_counter() - start
    assert rec.batches == [[1, 2]]  # the leader waited for the second call in flight
    assert elapsed < 1.5  # and ran as soon as every call in flight had come, not after 2 s

    rec.batches.clear()
    short = MicroBatcher(rec, max_batch=8, max_wait=0.05, load=load)
    with load.track(), load.track(), load.track():  # three "in flight", one ever arrives
        start = time.perf_counter()
        assert short.run([5]) == [10]
        waited = time.perf_counter() - start
    assert 0.04 <= waited < 1.0


def test_a_bad_input_fails_its_own_caller_only() -> None:
    gate = threading.Event()
    rec = Recorder(gate)
    batcher = MicroBatcher(rec, max_batch=64, max_wait=0.0)
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(batcher.run, [1])
        assert rec.started.wait(5)
        others = [pool.submit(batcher.run, [x]) for x in (2, -3, 4, 5)]
        wait_for(lambda: batcher.waiting == 4)
        gate.set()
        assert first.result(5) == [2]
        results = [f.exception(5) or f.result(5) for f in others]
    assert results[0] == [4] and results[2] == [8] and results[3] == [10]
    assert isinstance(results[1], ValueError) and "-3" in str(results[1])


def test_batcher_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(Recorder(), max_batch=0, max_wait=0.0)
    with pytest.raises(ValueError, match="max_wait"):
        MicroBatcher(Recorder(), max_batch=1, max_wait=-1.0)


class CountingStore(EdgeStore):
    def __init__(self, path: Path, schema: CollectionSchema) -> None:
        super().__init__(path, schema)
        self.batch_sizes: list[int] = []

    def query_batch(self, plans: object) -> list[list[StoredPoint]]:
        plans = list(plans)  # type: ignore[call-overload]
        self.batch_sizes.append(len(plans))
        time.sleep(0.05)  # long enough that concurrent callers pile up behind a batch
        return super().query_batch(plans)


def test_batched_store_queries_answer_what_single_ones_do(tmp_path: Path) -> None:
    dim = 16
    rng = np.random.default_rng(0)
    store = CountingStore(tmp_path / "store", CollectionSchema(bundle_id="b-test", dim=dim))
    vectors = rng.standard_normal((200, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.upsert(
        [
            PointRecord(
                point_id(f"p{i}"),
                v,
                PointPayload(
                    modality="text",
                    source=f"s{i}",
                    content_hash=f"h{i}",
                    media_id=f"m{i}",
                    bundle_id="b-test",
                ).to_dict(),
            )
            for i, v in enumerate(vectors)
        ]
    )
    plans: list[QueryPlan] = [DenseQuery(vectors[i], 5) for i in range(16)]
    expected = [[h.id for h in store.query_batch([p])[0]] for p in plans]
    store.batch_sizes.clear()
    batched = BatchingStore(store, max_batch=64, max_wait=0.0)
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda p: [h.id for h in batched.query_batch([p])[0]], plans))
    assert got == expected
    assert len(store.batch_sizes) < 16 and max(store.batch_sizes) > 1
    assert batched.count() == 200 and batched.get([point_id("p3")])[0].id == point_id("p3")
    batched.close()  # leaves the inner store open
    assert store.count() == 200
    store.close()

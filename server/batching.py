"""Micro-batching across concurrent calls: one forward pass or one store round trip for many.

A :class:`MicroBatcher` has no thread of its own. The first caller to find it idle leads: it
waits a bounded time for other callers (only while more calls are in flight than are already
waiting here), runs the function once over everybody's items, hands each caller its results, and
passes the lead to the oldest caller still waiting. A lone caller runs at once on its own thread,
so an idle server pays no wait and no thread hand-off; a busy one batches what piles up while a
batch runs. :class:`BatchingStore` puts one in front of a store's ``query_batch``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from indexer import query_plan as qp
from indexer.filters import FilterSpec
from indexer.schema import PointRecord, StoredPoint, StoreInfo
from indexer.store import VectorStore

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")  # its result
# (items in the batch, callers in it, seconds the function took)
BatchHook = Callable[[int, int, float], None]


class Load:
    """How many calls are inside the services now: a batch leader waits for more callers only
    while some calls in flight have not reached it yet."""

    def __init__(self) -> None:
        self._n = 0
        self._lock = threading.Lock()

    @property
    def value(self) -> int:
        return self._n

    @contextmanager
    def track(self) -> Iterator[None]:
        with self._lock:
            self._n += 1
        try:
            yield
        finally:
            with self._lock:
                self._n -= 1


@dataclass(eq=False)
class _Call(Generic[I, R]):
    items: Sequence[I]
    done: threading.Event = field(default_factory=threading.Event)
    results: list[R] | None = None
    error: BaseException | None = None
    lead: bool = False


class MicroBatcher(Generic[I, R]):
    """`fn` over the items of concurrent callers, in batches of at most `max_batch` items (a
    caller's items are never split; one caller over the cap runs alone).

    `fn` returns one result per item, in order. When a batch of several callers fails, each
    caller's items are run again alone, so one bad input fails its own call only.
    """

    def __init__(
        self,
        fn: Callable[[list[I]], Sequence[R]],
        *,
        max_batch: int,
        max_wait: float,
        load: Load | None = None,
        on_batch: BatchHook | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait < 0:
            raise ValueError("max_wait must be >= 0 seconds")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.load = load
        self.on_batch = on_batch
        self._cond = threading.Condition()
        self._queue: deque[_Call[I, R]] = deque()
        self._busy = False  # a leader is collecting or running a batch

    @property
    def waiting(self) -> int:
        """Callers queued for the next batch."""
        with self._cond:
            return len(self._queue)

    def run(self, items: Sequence[I]) -> list[R]:
        """Results for `items`, computed in a batch with whatever other callers are waiting."""
        if not items:
            return []
        call: _Call[I, R] = _Call(items)
        with self._cond:
            self._queue.append(call)
            if self._busy:
                self._cond.notify()  # a leader collecting a batch counts the new arrival
            else:
                self._busy = call.lead = True
        if not call.lead:
            call.done.wait()
        if call.results is None and call.error is None:  # led: this caller runs the next batch
            self._lead(call)
        if call.error is not None:
            raise call.error
        if call.results is None:  # pragma: no cover - every batch sets results or an error
            raise RuntimeError("micro-batch finished without a result")
        return call.results

    def _lead(self, call: _Call[I, R]) -> None:
        with self._cond:
            until = time.monotonic() + self.max_wait
            while self._should_wait() and (left := until - time.monotonic()) > 0:
                self._cond.wait(left)
            batch = self._take(call)
        try:
            self._execute(batch)
        finally:
            with self._cond:
                successor = self._queue[0] if self._queue else None
                if successor is not None:
                    successor.lead = True
                else:
                    self._busy = False
            for c in batch:
                if c is not call:
                    c.done.set()
            if successor is not None:
                successor.done.set()

    def _should_wait(self) -> bool:
        waiting = sum(len(c.items) for c in self._queue)
        in_flight = self.load.value if self.load is not None else 0
        return waiting < self.max_batch and in_flight > len(self._queue)

    def _take(self, leader: _Call[I, R]) -> list[_Call[I, R]]:
        """The leader's call, then the oldest others while the batch stays within max_batch."""
        self._queue.remove(leader)
        batch, size = [leader], len(leader.items)
        while self._queue and size + len(self._queue[0].items) <= self.max_batch:
            nxt = self._queue.popleft()
            batch.append(nxt)
            size += len(nxt.items)
        return batch

    def _execute(self, batch: list[_Call[I, R]]) -> None:
        """Set every call's results or error; never raises (the followers wait on it)."""
        flat = [item for c in batch for item in c.items]
        start = time.perf_counter()
        try:
            results = list(self.fn(flat))
            if len(results) != len(flat):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(flat)} items")
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
                return
            for c in batch:  # find the caller whose input failed; the others get their results
                try:
                    c.results = list(self.fn(list(c.items)))
                except Exception as own:
                    c.error = own
            return
        if self.on_batch is not None:
            self.on_batch(len(flat), len(batch), time.perf_counter() - start)
        at = 0
        for c in batch:
            c.results = results[at : at + len(c.items)]
            at += len(c.items)


class BatchingStore(VectorStore):
    """A store whose ``query_batch`` calls from concurrent threads go to the inner store as one
    batch (one planned pass over the segments, one round trip to a server). The rest passes
    through. It does not own the store: close() leaves it open."""

    def __init__(
        self,
        inner: VectorStore,
        *,
        max_batch: int,
        max_wait: float,
        load: Load | None = None,
        on_batch: BatchHook | None = None,
    ) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.schema = inner.schema
        self._batcher: MicroBatcher[qp.QueryPlan, list[StoredPoint]] = MicroBatcher(
            inner.query_batch, max_batch=max_batch, max_wait=max_wait, load=load, on_batch=on_batch
        )

    def query_batch(self, plans: Sequence[qp.QueryPlan]) -> list[list[StoredPoint]]:
        return self._batcher.run(plans)

    def upsert(self, points: Sequence[PointRecord]) -> None:
        self.inner.upsert(points)

    def delete(self, ids: Sequence[str]) -> None:
        self.inner.delete(ids)

    def optimize(self) -> None:
        self.inner.optimize()

    def get(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[StoredPoint]:
        return self.inner.get(ids, with_vectors=with_vectors)

    def count(self, filter: FilterSpec | None = None) -> int:
        return self.inner.count(filter)

    def scroll(
        self, *, limit: int, offset: str | None = None, filter: FilterSpec | None = None
    ) -> tuple[list[StoredPoint], str | None]:
        return self.inner.scroll(limit=limit, offset=offset, filter=filter)

    def info(self) -> StoreInfo:
        return self.inner.info()

    def create_field_index(self, key: str, kind: str) -> None:
        self.inner.create_field_index(key, kind)

    def field_indexes(self) -> dict[str, str]:
        return self.inner.field_indexes()

    def close(self) -> None:
        return None

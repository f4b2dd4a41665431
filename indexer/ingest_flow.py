"""How a run's threads hand off, stop and fail together: bounded slots, a byte budget, one error.

Torch-free plumbing for indexer.pipeline. Every blocking wait here wakes up at least every
`_TICK` seconds to notice a stop, so no thread outlives a failed run by more than that (plus
the decode in progress, which its worker's time limit bounds).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_TICK = 0.1


class IngestAborted(RuntimeError):
    """The run cannot go on (the store, journal or report cannot be written: a full disk...).
    Everything recorded before it stays valid; running again resumes from there."""


class Flow:
    """Slots for items in flight, the end of the input, and the first error of any thread."""

    def __init__(self, slots: int) -> None:
        self._cond = threading.Condition()
        self._free = slots
        self._outstanding = 0
        self._feeding = True
        self._error: BaseException | None = None
        self._stop = threading.Event()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def take_slot(self) -> bool:
        """Wait for room for one more item; False once the run is stopping."""
        with self._cond:
            while self._free == 0 and not self.stopped:
                self._cond.wait(_TICK)
            if self.stopped:
                return False
            self._free -= 1
            self._outstanding += 1
            return True

    def release_slots(self, n: int) -> None:
        with self._cond:
            self._free += n
            self._outstanding -= n
            self._cond.notify_all()

    def feeding_done(self) -> None:
        with self._cond:
            self._feeding = False
            self._cond.notify_all()

    def wait(self, check: Callable[[], None] | None) -> None:
        """Until every item is through, or the run fails; `check` runs on every tick."""
        while True:
            with self._cond:
                if self.stopped or (not self._feeding and self._outstanding == 0):
                    return
                self._cond.wait(_TICK)
            if check is not None:
                try:
                    check()
                except BaseException as exc:
                    self.fail(exc)
                    return

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = exc
            self._stop.set()
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stop.set()
            self._cond.notify_all()

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def guard(self, fn: Callable[..., None], *args: Any) -> Callable[..., None]:
        """`fn` for a thread or pool: whatever it raises fails the run instead of vanishing."""

        def run(*more: Any) -> None:
            try:
                fn(*args, *more)
            except BaseException as exc:
                self.fail(exc)

        return run

    def get(self, q: queue.Queue[T]) -> T | None:
        """The next item of `q`, or None once the run is stopping."""
        while not self.stopped:
            try:
                return q.get(timeout=_TICK)
            except queue.Empty:
                continue
        return None


class Budget:
    """Bytes of decoded media waiting for the encoder, held under a limit (one item may
    exceed it alone, so a single huge file still goes through)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, flow: Flow) -> bool:
        with self._cond:
            while self._held > 0 and self._held + n > self.limit and not flow.stopped:
                self._cond.wait(_TICK)
            if flow.stopped:
                return False
            self._held += n
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self._held -= n
            self._cond.notify_all()

"""Decoder worker processes: a small pool of persistent children that run one call at a time.

Decoders are native code: a corrupt file can hang them or crash the process, and a hostile one
can ask for gigabytes. Each call runs in a child process that the caller waits on at most
`timeout` seconds, under an address-space limit (RLIMIT_AS); a worker that hangs is killed, one
that crashes or runs out of memory is replaced, and either way that one file fails with a
MediaDecodeError while the ingest or the server goes on. Workers die with the process that
started them (PR_SET_PDEATHSIG), even when it is killed with SIGKILL mid-decode.

A child is `python -c` serving requests over its stdin/stdout: a length-prefixed pickle of
("module:function", args) in, ("ok", result) or ("err", message) out (or ("last", message)
from a worker that exits after answering), with large buffers (the
media bytes in, decoded samples and frames out) sent beside the pickle rather than copied into
it. A subprocess rather than multiprocessing: nothing of the parent (threads, the __main__
module, CUDA state) is copied or re-imported, and killing it on a hang is always safe.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import IO, Any

from encoders.errors import MediaDecodeError
from encoders.limits import DEFAULT_MEMORY_LIMIT, format_bytes

# Imported by every worker before it reports ready, so a started worker is a ready worker.
PRELOAD = ("numpy", "av", "encoders.av_decode")

# -- the wire format -----------------------------------------------------------------------

_HEADER = struct.Struct("!QI")  # pickle length, number of out-of-band buffers
_LENGTH = struct.Struct("!Q")


def _read_into(stream: IO[bytes], buf: bytearray | memoryview) -> None:
    view, pos = memoryview(buf), 0
    while pos < len(view):
        n = stream.readinto(view[pos:])  # type: ignore[attr-defined]
        if not n:
            raise EOFError("decoder worker closed its pipe")
        pos += n


def _read_exact(stream: IO[bytes], n: int) -> bytearray:
    buf = bytearray(n)
    _read_into(stream, buf)
    return buf


def send(stream: IO[bytes], obj: Any) -> None:
    """Write `obj`; numpy arrays and pickle.PickleBuffer objects in it travel out of band."""
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    stream.write(_HEADER.pack(len(body), len(raws)) + b"".join(_LENGTH.pack(r.nbytes) for r in raws))
    stream.write(body)
    for raw in raws:
        stream.write(raw)
    stream.flush()


def recv(stream: IO[bytes]) -> Any:
    n, count = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    sizes = [_LENGTH.unpack(_read_exact(stream, _LENGTH.size))[0] for _ in range(count)]
    body = _read_exact(stream, n)
    return pickle.loads(body, buffers=[_read_exact(stream, size) for size in sizes])


# -- run in the child ----------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies, however the parent dies: a
    worker left decoding after its server is gone holds gigabytes for nothing."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def worker_main() -> None:
    """The child's loop. argv: parent pid, address-space limit in bytes (0: none)."""
    parent, limit = int(sys.argv[1]), int(sys.argv[2])
    _die_with_parent(parent)
    for module in PRELOAD:
        importlib.import_module(module)
    if limit:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # Keep the protocol pipe private: native decoders print to fd 1, so move it to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    out_of_memory = "ran out of memory"
    if limit:
        out_of_memory += f": decoding needs more than the {format_bytes(limit)} limit (memory_limit)"
    while True:
        try:
            target, args = recv(inp)
        except EOFError:
            return
        except MemoryError:  # the request itself did not fit: a limit far too low to work under
            send(out, ("last", out_of_memory))
            return
        try:
            reply: tuple[str, Any] = ("ok", _resolve(target)(*args))
        except MediaDecodeError as exc:
            reply = ("err", str(exc))
        except MemoryError:
            # Allocators and decoders may be left half-way: answer, then let a fresh worker go on.
            reply = ("last", out_of_memory)
        except Exception as exc:  # any decoder failure is that file's failure, reported by name
            reply = ("err", f"{type(exc).__name__}: {_first_line(exc)}")
        del args
        try:
            send(out, reply)
        except MemoryError:
            reply = ("last", out_of_memory)
            send(out, reply)
        if reply[0] == "last":
            return


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


# -- the parent side -----------------------------------------------------------------------


class _Spawner:
    """Starts worker processes from one long-lived thread. PR_SET_PDEATHSIG fires when the
    *thread* that forked the child exits, not the process; callers reach the pool from
    short-lived threads (a ThreadPoolExecutor per batch), which would take their workers along."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[list[str], dict[str, str], Future[Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def spawn(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self._lock:
            # A forked copy of this process has the object but not the thread.
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._requests = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._loop, name="decoder-spawner", daemon=True)
                self._thread.start()
                self._pid = os.getpid()
            done: Future[subprocess.Popen[bytes]] = Future()
            self._requests.put((argv, env, done))
        return done.result()

    def _loop(self) -> None:
        requests = self._requests
        while True:
            argv, env, done = requests.get()
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
                )
            except Exception as exc:  # handed to the caller, who raises it
                done.set_exception(exc)
            else:
                done.set_result(proc)


_spawner = _Spawner()


class _Worker:
    def __init__(self, memory_limit: int) -> None:
        self.memory_limit = memory_limit
        # One thread per worker: parallelism comes from the pool, and several workers each
        # spinning up a thread per core only fight over the cores (measured: 2x slower).
        # One malloc arena: glibc reserves 64 MB of address space per arena, and under
        # RLIMIT_AS the reservation, not the use, is what would fail first.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1"}
        code = "from encoders.workers import worker_main; worker_main()"
        argv = [sys.executable, "-c", code, str(os.getpid()), str(memory_limit)]
        self.proc = _spawner.spawn(argv, env)

    def call(self, target: str, args: tuple[Any, ...], timeout: float, name: str) -> Any:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        if stdin is None or stdout is None:
            raise RuntimeError("decoder worker was started without pipes")
        try:
            send(stdin, (target, args))
        except BrokenPipeError:
            raise MediaDecodeError(f"{name}: decoder worker is not running ({self._exit()})") from None
        ready, _, _ = select.select([stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise MediaDecodeError(f"{name}: decoding took longer than {timeout:g} s and was stopped")
        try:
            status, value = recv(stdout)
        except EOFError:
            raise MediaDecodeError(f"{name}: decoder crashed ({self._exit()})") from None
        if status == "last":
            self._exit()  # reap it now, so the pool replaces it rather than hand it the next file
        if status != "ok":
            raise MediaDecodeError(f"{name}: {value}")
        return value

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()

    def _exit(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"


class IsolatedRunner:
    """A small pool of decoder worker processes; a worker that hangs or dies is replaced."""

    def __init__(self, workers: int = 1, *, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> None:
        if memory_limit < 0:
            raise ValueError("memory_limit must be a byte count, or 0 for none")
        self.memory_limit = memory_limit
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(max(1, workers)):
            self._idle.put(None)  # started on first use
        self._closed = False

    def run(self, target: str, args: tuple[Any, ...], *, timeout: float, name: str) -> Any:
        """Call `module:function`(*args) in a worker. Raises MediaDecodeError naming `name` when it
        raises, runs past `timeout` seconds, runs out of memory, or crashes the worker."""
        if self._closed:
            raise RuntimeError("decoder pool is closed")
        worker = self._idle.get()
        try:
            if worker is None or not worker.alive():
                worker = _Worker(self.memory_limit)
            return worker.call(target, args, timeout, name)
        finally:
            self._idle.put(worker if worker is not None and worker.alive() else None)

    def start(self) -> None:
        """Start every worker now rather than on first use (each imports the decoders)."""
        workers = [self._idle.get() for _ in range(self._idle.qsize())]
        for w in workers:
            self._idle.put(w if w is not None and w.alive() else _Worker(self.memory_limit))

    def pids(self) -> list[int]:
        """Process ids of the idle, running workers (for operators and tests)."""
        workers = [self._idle.get() for _ in range(self._idle.qsize())]
        for w in workers:
            self._idle.put(w)
        return [w.proc.pid for w in workers if w is not None and w.alive()]

    def close(self) -> None:
        self._closed = True
        while not self._idle.empty():
            worker = self._idle.get_nowait()
            if worker is not None:
                worker.kill()

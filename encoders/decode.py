"""Audio and video decoding, run in a separate worker process with a time limit.

Decoders are native code: a corrupt file can hang them or crash the process. Decoding runs in a
persistent worker process and the caller waits at most `timeout` seconds; a worker that hangs is
killed and one that crashes is replaced. Either way that one file fails with a MediaDecodeError
and the ingest or the server goes on.
"""

from __future__ import annotations

import importlib
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from encoders.errors import MediaDecodeError

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".m4a"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".mkv", ".mov", ".avi"})


@dataclass
class DecodedAudio:
    samples: np.ndarray  # float32 mono
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass
class DecodedVideo:
    frames: np.ndarray  # uint8 (N, H, W, 3), sampled at the requested rate
    times: np.ndarray  # float32 (N,), seconds from the start
    duration: float
    audio: DecodedAudio | None  # None when the file has no audio track


# -- run in the child ------------------------------------------------------------------------


def decode_audio_file(path: str, sample_rate: int) -> DecodedAudio:
    """Mono float32 samples at `sample_rate`. Decord decodes; PyAV reads the stream's native rate
    (decord does not expose it) and decodes the formats decord cannot."""
    import torch
    import torchaudio

    native_rate = _probe_audio_rate(path)
    try:
        samples = _decode_audio_decord(path)
    except MediaDecodeError:
        samples = _decode_audio_av(path)
    if samples.size == 0:
        raise MediaDecodeError("audio track holds no samples")
    if not np.isfinite(samples).all():
        raise MediaDecodeError("audio track decodes to non-finite samples")
    if native_rate != sample_rate:
        samples = torchaudio.functional.resample(torch.from_numpy(samples), native_rate, sample_rate).numpy()
    return DecodedAudio(samples.astype(np.float32, copy=False), sample_rate)


def _probe_audio_rate(path: str) -> int:
    import av

    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise MediaDecodeError("no audio stream")
            rate = container.streams.audio[0].codec_context.sample_rate
    except av.error.FFmpegError as exc:
        raise MediaDecodeError(f"not a readable media file ({exc})") from exc
    if not rate:
        raise MediaDecodeError("audio stream has no sample rate")
    return int(rate)


def _decode_audio_decord(path: str) -> np.ndarray:
    import decord

    try:
        reader = decord.AudioReader(path, mono=True)
        return np.asarray(reader[:].asnumpy()[0], dtype=np.float32)
    except (decord.DECORDError, RuntimeError, IndexError) as exc:
        raise MediaDecodeError(f"decord could not decode audio ({exc})") from exc


def _decode_audio_av(path: str) -> np.ndarray:
    import av

    try:
        with av.open(path) as container:
            resampler = av.AudioResampler(format="flt", layout="mono")
            chunks = []
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as exc:
        raise MediaDecodeError(f"corrupt or truncated audio ({exc})") from exc
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)


def decode_video_file(
    path: str, fps: float, max_frames: int, sample_rate: int, short_side: int
) -> DecodedVideo:
    """Frames sampled at `fps` (spread evenly over the video when that exceeds `max_frames`),
    scaled down so the short side is at most `short_side`, and the audio track if there is one."""
    import decord

    try:
        reader = decord.VideoReader(path)
        n = len(reader)
        native_fps = float(reader.get_avg_fps())
    except (decord.DECORDError, RuntimeError) as exc:
        raise MediaDecodeError(f"not a decodable video ({_first_line(exc)})") from exc
    if n == 0 or native_fps <= 0:
        raise MediaDecodeError("video has no frames")
    duration = n / native_fps
    times = np.arange(0.0, duration, 1.0 / fps)
    if len(times) > max_frames:
        times = np.linspace(0.0, duration, max_frames, endpoint=False)
    indices = sorted({min(n - 1, round(t * native_fps)) for t in times})
    try:
        frames = reader.get_batch(indices).asnumpy()
    except (decord.DECORDError, RuntimeError) as exc:
        raise MediaDecodeError(f"corrupt or truncated video ({_first_line(exc)})") from exc
    try:
        audio: DecodedAudio | None = decode_audio_file(path, sample_rate)
    except MediaDecodeError:
        audio = None  # a silent video is still a video
    # Times from frame indices: decord's own timestamps are off for containers without pts (avi).
    stamps = np.asarray(indices, dtype=np.float32) / native_fps
    return DecodedVideo(_shrink(frames, short_side), stamps, float(duration), audio)


def _shrink(frames: np.ndarray, short_side: int) -> np.ndarray:
    h, w = frames.shape[1:3]
    scale = short_side / min(h, w)
    if scale >= 1.0:
        return frames
    from PIL import Image

    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR)) for f in frames])


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


# -- the worker process ---------------------------------------------------------------------
#
# A persistent child (`python -m encoders.decode`) serves requests over its stdin/stdout: a
# length-prefixed pickle of ("module:function", args) in, ("ok", result) or ("err", message) out.
# A subprocess rather than multiprocessing: nothing of the parent (threads, the __main__ module,
# CUDA state) is copied or re-imported, and killing it on a hang is always safe.

_HEADER = struct.Struct("!Q")


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            raise EOFError("decoder worker closed its pipe")
        buf += chunk
    return bytes(buf)


def _send(stream: BinaryIO, obj: Any) -> None:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(body)) + body)
    stream.flush()


def _recv(stream: BinaryIO) -> Any:
    (n,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    return pickle.loads(_read_exact(stream, n))


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _worker_main() -> None:
    # Import the decoders up front, so a started worker is a ready worker.
    import av  # noqa: F401
    import decord  # noqa: F401
    import torch
    import torchaudio  # noqa: F401

    torch.set_num_threads(1)
    # Keep the protocol pipe private: native decoders print to fd 1, so move it to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    while True:
        try:
            target, args = _recv(inp)
        except EOFError:
            return
        try:
            reply: tuple[str, Any] = ("ok", _resolve(target)(*args))
        except MediaDecodeError as exc:
            reply = ("err", str(exc))
        except Exception as exc:  # any decoder failure is that file's failure, reported by name
            reply = ("err", f"{type(exc).__name__}: {_first_line(exc)}")
        _send(out, reply)


# -- the parent side ---------------------------------------------------------------------------


class _Worker:
    def __init__(self) -> None:
        # One thread per worker: parallelism comes from the pool, and several workers each
        # spinning up a thread per core only fight over the cores (measured: 2x slower).
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "encoders.decode"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )

    def call(self, target: str, args: tuple[Any, ...], timeout: float, name: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            _send(self.proc.stdin, (target, args))  # type: ignore[arg-type]
        except BrokenPipeError:
            raise MediaDecodeError(f"{name}: decoder worker is not running ({self._exit()})") from None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise MediaDecodeError(f"{name}: decoding took longer than {timeout:g} s and was stopped")
        try:
            status, value = _recv(self.proc.stdout)  # type: ignore[arg-type]
        except EOFError:
            raise MediaDecodeError(f"{name}: decoder crashed ({self._exit()})") from None
        if status == "err":
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

    def __init__(self, workers: int = 1) -> None:
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(max(1, workers)):
            self._idle.put(None)  # started on first use
        self._closed = False

    def run(self, target: str, args: tuple[Any, ...], *, timeout: float, name: str) -> Any:
        """Call `module:function`(*args) in a worker. Raises MediaDecodeError naming `name` when it
        raises, runs past `timeout` seconds, or crashes the worker."""
        if self._closed:
            raise RuntimeError("decoder pool is closed")
        worker = self._idle.get()
        try:
            if worker is None or not worker.alive():
                worker = _Worker()
            return worker.call(target, args, timeout, name)
        finally:
            self._idle.put(worker if worker is not None and worker.alive() else None)

    def start(self) -> None:
        """Start every worker now rather than on first use (each imports the decoders, ~1 s)."""
        workers = [self._idle.get() for _ in range(self._idle.qsize())]
        for w in workers:
            self._idle.put(w if w is not None and w.alive() else _Worker())

    def close(self) -> None:
        self._closed = True
        while not self._idle.empty():
            worker = self._idle.get_nowait()
            if worker is not None:
                worker.kill()


class MediaDecoder:
    """Decodes audio and video files or bytes in isolated worker processes."""

    def __init__(
        self,
        *,
        timeout: float = 120.0,
        sample_rate: int = 16_000,
        fps: float = 1.0,
        max_frames: int = 120,
        short_side: int = 256,
        workers: int = 2,
    ) -> None:
        self.timeout = timeout
        self.workers = max(1, workers)
        self.sample_rate = sample_rate
        self.fps = fps
        self.max_frames = max_frames
        self.short_side = short_side
        self.runner = IsolatedRunner(self.workers)

    def audio(self, data: bytes | Path, *, name: str) -> DecodedAudio:
        return self._run("encoders.decode:decode_audio_file", data, (self.sample_rate,), name)

    def video(self, data: bytes | Path, *, name: str) -> DecodedVideo:
        args = (self.fps, self.max_frames, self.sample_rate, self.short_side)
        return self._run("encoders.decode:decode_video_file", data, args, name)

    def _run(self, target: str, data: bytes | Path, args: tuple[Any, ...], name: str) -> Any:
        with _as_file(data, name) as path:
            try:
                return self.runner.run(target, (path, *args), timeout=self.timeout, name=name)
            except MediaDecodeError as exc:
                # Name the caller's file, not the temp file the bytes were written to.
                raise MediaDecodeError(str(exc).replace(path, name)) from None

    def start(self) -> None:
        self.runner.start()

    def close(self) -> None:
        self.runner.close()


class _as_file:
    """A path for the decoder: the file itself, or bytes written to a private temp file."""

    def __init__(self, data: bytes | Path, name: str) -> None:
        self.data = data
        self.name = name
        self.tmp: str | None = None

    def __enter__(self) -> str:
        if isinstance(self.data, Path):
            return str(self.data)
        if not self.data:
            raise MediaDecodeError(f"{self.name}: empty media bytes")
        fd, self.tmp = tempfile.mkstemp(prefix="mmsearch-", suffix=Path(self.name).suffix[:8])
        with os.fdopen(fd, "wb") as f:
            f.write(self.data)
        return self.tmp

    def __exit__(self, *exc: object) -> None:
        if self.tmp is not None:
            os.unlink(self.tmp)


if __name__ == "__main__":
    _worker_main()

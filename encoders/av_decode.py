"""Audio and video decoding with PyAV; runs inside a decoder worker (encoders.workers).

Every input is opened one way: from memory or an already-open file, with its container sniffed
from its own bytes (encoders.sniff) and forced on the demuxer, and with FFmpeg's protocol
whitelist empty, so that no input, however crafted, makes FFmpeg open another file or a URL
(a nested demuxer such as concat copies the whitelist of the one that opened it).

Decoding is streamed: one frame at a time, audio resampled as it arrives, video frames scaled
down as they are kept. Peak memory is one decoded frame plus what is returned, whatever the
file's length or resolution, and the caps in DecodeLimits are checked both against the headers
before decoding and against the decoded stream while decoding.
"""

from __future__ import annotations

import io
import math
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from encoders.decode import DecodedAudio, DecodedVideo
from encoders.errors import MediaDecodeError
from encoders.limits import DecodeLimits
from encoders.sniff import AUDIO_CONTAINERS, VIDEO_CONTAINERS, Container, require

# A server path (the operator's local ingest) or the uploaded bytes themselves.
Source = str | bytes | bytearray | memoryview

# No protocol at all: the top-level input is read through a Python file object, never a URL.
_OPEN_OPTIONS = {"protocol_whitelist": "none"}
_AUDIO_BLOCK = 16384
# Keep reading sequentially when the next frame to keep is this close; seek when it is farther.
_SEEK_GAP_SECONDS = 10.0
# Kept frames are never wider (or taller) than this many times the requested short side, so a
# 65000x260 frame cannot turn max_frames kept frames into gigabytes.
_MAX_ASPECT = 4


# -- opening -------------------------------------------------------------------------------


@contextmanager
def open_media(source: Source, allowed: tuple[Container, ...], *, kind: str) -> Iterator[Any]:
    """An open PyAV input container for `source`, whose sniffed format must be in `allowed`."""
    try:
        f = open(source, "rb") if isinstance(source, str) else io.BytesIO(source)  # noqa: SIM115
    except OSError as exc:
        raise MediaDecodeError(f"cannot read file ({exc.strerror or exc})") from exc
    with f:
        fmt = require(f, allowed, kind=kind)
        with open_container(f, fmt.demuxer, label=fmt.label) as container:
            yield container


@contextmanager
def open_container(f: io.IOBase, demuxer: str, *, label: str) -> Iterator[Any]:
    """PyAV's input container over the file object `f` with the demuxer forced, no protocols."""
    try:
        container = av.open(f, format=demuxer, options=_OPEN_OPTIONS, metadata_errors="replace")
    except MemoryError:
        raise
    except av.error.FFmpegError as exc:
        raise MediaDecodeError(f"not a readable {label} file ({_reason(exc)})") from exc
    with container:
        yield container


def _reason(exc: BaseException) -> str:
    """FFmpeg's own words without the file name PyAV appends (a temp name or '<none>')."""
    text = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _configure_decoder(stream: Any, options: dict[str, str]) -> None:
    """One thread: parallelism comes from the worker pool, and each decoder thread would add a
    stack and a frame in flight to the worker's memory. `options` go to FFmpeg's decoder."""
    stream.codec_context.thread_count = 1
    if options:
        stream.codec_context.options = options


def _header_seconds(container: Any, stream: Any) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


# -- audio ---------------------------------------------------------------------------------


def decode_audio(source: Source, sample_rate: int, limits: DecodeLimits) -> DecodedAudio:
    """Mono float32 samples at `sample_rate` from the first audio stream."""
    with open_media(source, AUDIO_CONTAINERS, kind="audio") as container:
        return decode_audio_track(container, sample_rate, limits)


def decode_audio_track(container: Any, sample_rate: int, limits: DecodeLimits) -> DecodedAudio:
    if not container.streams.audio:
        raise MediaDecodeError("no audio stream")
    stream = container.streams.audio[0]
    if not stream.codec_context.sample_rate:
        raise MediaDecodeError("audio stream has no sample rate")
    cap = limits.max_audio_seconds
    header = _header_seconds(container, stream)
    if header is not None and header > cap:
        raise MediaDecodeError(f"audio lasts {header:.0f} s, above the {cap:g} s limit (max_audio_seconds)")
    _configure_decoder(stream, {})
    samples = _SampleBuffer(int(cap * sample_rate), hint=int((header or 60.0) * sample_rate) + sample_rate)
    # Output in blocks of _AUDIO_BLOCK samples: per-frame overhead dominates otherwise (an MP3
    # frame is 1152 samples, an hour of it 150,000 frames).
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate, frame_size=_AUDIO_BLOCK)
    try:
        for frame in container.decode(stream):
            for block in resampler.resample(frame):
                samples.add(_mono(block))
        for block in resampler.resample(None):
            samples.add(_mono(block))
    except MemoryError:
        raise
    except av.error.FFmpegError as exc:
        raise MediaDecodeError(f"corrupt or truncated audio ({_reason(exc)})") from exc
    except ValueError as exc:  # the resampler refuses a frame whose layout or rate changed
        raise MediaDecodeError(f"audio stream changes format midway ({_reason(exc)})") from exc
    except _OverCap:
        raise MediaDecodeError(
            f"audio runs longer than the {cap:g} s limit (max_audio_seconds), whatever its header says"
        ) from None
    out = samples.array()
    if out.size == 0:
        raise MediaDecodeError("audio track holds no samples")
    if not np.isfinite(out).all():
        raise MediaDecodeError("audio track decodes to non-finite samples")
    return DecodedAudio(out, sample_rate)


def _mono(frame: Any) -> np.ndarray:
    return np.frombuffer(frame.planes[0], dtype=np.float32, count=frame.samples)


class _OverCap(Exception):
    pass


class _SampleBuffer:
    """A growing float32 buffer that refuses to pass `limit` samples. Sized from the header's
    duration up front, so a truthful file is decoded into one allocation, not chunks + a copy."""

    def __init__(self, limit: int, hint: int) -> None:
        self.limit = limit
        self.buf = np.empty(max(1, min(hint, limit)), dtype=np.float32)
        self.n = 0

    def add(self, chunk: np.ndarray) -> None:
        end = self.n + len(chunk)
        if end > self.limit:
            raise _OverCap
        if end > len(self.buf):
            grown = np.empty(min(self.limit, max(end, len(self.buf) * 3 // 2)), dtype=np.float32)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n : end] = chunk
        self.n = end

    def array(self) -> np.ndarray:
        return self.buf[: self.n]


# -- video ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _VideoProbe:
    duration: float
    rate: float  # frames per second
    start: float  # seconds of the stream's first timestamp
    ordinal: bool  # frame times from frame counts, not timestamps


def decode_video(
    source: Source, fps: float, max_frames: int, sample_rate: int, short_side: int, limits: DecodeLimits
) -> DecodedVideo:
    """Frames sampled at `fps` (spread evenly over the video when that exceeds `max_frames`),
    scaled down so the short side is at most `short_side`, and the audio track if there is one."""
    with open_media(source, VIDEO_CONTAINERS, kind="video") as container:
        probe = _probe_video(container, limits)
        has_audio = bool(container.streams.audio)
    with open_media(source, VIDEO_CONTAINERS, kind="video") as container:
        frames, times = _sample_frames(container, probe, fps, max_frames, short_side, limits)
    audio: DecodedAudio | None = None
    if has_audio:
        try:
            with open_media(source, VIDEO_CONTAINERS, kind="video") as container:
                audio = decode_audio_track(container, sample_rate, limits)
        except MediaDecodeError:
            audio = None  # a silent (or unreadable) track still leaves a video
    return DecodedVideo(frames, times, probe.duration, audio)


def _probe_video(container: Any, limits: DecodeLimits) -> _VideoProbe:
    """Duration, frame rate and frame size, refused against the caps before any decoding."""
    if not container.streams.video:
        raise MediaDecodeError("no video stream")
    stream = container.streams.video[0]
    _check_frame_size(stream.codec_context.width, stream.codec_context.height, limits)
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    if not (math.isfinite(rate) and rate > 0):
        raise MediaDecodeError("video stream has no frame rate")
    cap = limits.max_video_seconds
    header = _header_seconds(container, stream)
    if header is not None and header > cap:
        raise MediaDecodeError(f"video lasts {header:.0f} s, above the {cap:g} s limit (max_video_seconds)")
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    # AVI has no timestamps, only frame order (empty chunks shift FFmpeg's guesses): time frames
    # by their count. mp4/mov state the stream's duration; Matroska and AVI only the container's,
    # which covers the longest stream, so count the video packets without decoding them.
    ordinal = container.format.name == "avi"
    if stream.duration and not ordinal:
        return _VideoProbe(float(stream.duration * stream.time_base), rate, start, ordinal)
    count, end = 0, 0.0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            count += 1
            if packet.pts is not None:
                # Packets often carry no duration: then a frame lasts 1/rate.
                length = float(packet.duration * packet.time_base) if packet.duration else 1.0 / rate
                end = max(end, float(packet.pts * packet.time_base) - start + length)
            if max(end, count / rate) > cap:
                raise MediaDecodeError(
                    f"video runs longer than the {cap:g} s limit (max_video_seconds), whatever its header says"
                )
    except MemoryError:
        raise
    except av.error.FFmpegError as exc:
        raise MediaDecodeError(f"corrupt or truncated video ({_reason(exc)})") from exc
    if count == 0:
        raise MediaDecodeError("video has no frames")
    return _VideoProbe(count / rate if ordinal or end == 0 else end, rate, start, ordinal)


def _check_frame_size(width: int, height: int, limits: DecodeLimits) -> None:
    cap = limits.max_frame_pixels
    if width * height > cap:
        raise MediaDecodeError(
            f"video frames are {width}x{height} pixels, above the {cap} pixel limit (max_frame_pixels)"
        )


def _targets(duration: float, fps: float, max_frames: int) -> np.ndarray:
    times = np.arange(0.0, duration, 1.0 / fps)
    if len(times) > max_frames:
        times = np.linspace(0.0, duration, max_frames, endpoint=False)
    return times


def _sample_frames(
    container: Any, probe: _VideoProbe, fps: float, max_frames: int, short_side: int, limits: DecodeLimits
) -> tuple[np.ndarray, np.ndarray]:
    """The first frame at (or within half a frame before) each target time, scaled down as it is
    kept. Far-apart targets are reached by seeking to the keyframe before them."""
    stream = container.streams.video[0]
    _configure_decoder(stream, {"max_pixels": str(limits.max_frame_pixels)})
    targets = deque(float(t) for t in _targets(probe.duration, fps, max_frames))
    tol = 0.5 / probe.rate
    kept = _Frames(len(targets), short_side)
    # Seek only forwards: when a seek lands no later than where decoding already was (keyframes
    # are farther apart than the targets), reading on is cheaper, so stop seeking.
    seekable, sought_from = not probe.ordinal, None
    frames = _decoded(container, stream)
    count = 0
    try:
        while targets:
            frame = next(frames, None)
            if frame is None:
                break
            count += 1
            # FFmpeg's max_pixels already refuses to allocate a larger frame than the cap (a stream
            # may change size midway, its header may lie); this names the cap when it did not.
            _check_frame_size(frame.width, frame.height, limits)
            if probe.ordinal or frame.time is None:
                t = (count - 1) / probe.rate
            else:
                t = float(frame.time) - probe.start
            if sought_from is not None:
                seekable, sought_from = t > sought_from, None
            if t > limits.max_video_seconds:
                raise MediaDecodeError(
                    f"video runs longer than the {limits.max_video_seconds:g} s limit (max_video_seconds)"
                )
            if t + tol >= targets[0]:
                kept.add(frame, t)
                while targets and targets[0] <= t + tol:
                    targets.popleft()
            if seekable and targets and targets[0] - t > _SEEK_GAP_SECONDS:
                if _seek(container, stream, targets[0] + probe.start):
                    frames, sought_from = _decoded(container, stream), t
                else:
                    seekable = False
    except MemoryError:
        raise
    except av.error.FFmpegError as exc:
        raise MediaDecodeError(f"corrupt or truncated video ({_reason(exc)})") from exc
    if kept.pixels is None:
        raise MediaDecodeError("video has no decodable frames")
    return kept.pixels[: kept.n], kept.times[: kept.n]


def _seek(container: Any, stream: Any, seconds: float) -> bool:
    """Seek to the keyframe at or before `seconds`; False (and read on) where the file cannot."""
    try:
        container.seek(int(seconds / stream.time_base), stream=stream)
    except av.error.FFmpegError:
        return False
    return True


def _decoded(container: Any, stream: Any) -> Iterator[Any]:
    for packet in container.demux(stream):
        yield from packet.decode()


class _Frames:
    """Kept frames as RGB uint8, all scaled to the first kept frame's output size."""

    def __init__(self, capacity: int, short_side: int) -> None:
        self.capacity = capacity
        self.short_side = short_side
        self.pixels: np.ndarray | None = None
        self.times = np.zeros(capacity, dtype=np.float32)
        self.n = 0

    def add(self, frame: Any, t: float) -> None:
        if self.pixels is None:
            w, h = scaled_size(frame.width, frame.height, self.short_side)
            self.pixels = np.empty((self.capacity, h, w, 3), dtype=np.uint8)
        h, w = self.pixels.shape[1:3]
        rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA")
        self.pixels[self.n] = rgb.to_ndarray()
        self.times[self.n] = t
        self.n += 1


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) scaled down, never up, so the short side is at most `short_side` and the
    long side at most _MAX_ASPECT times that."""
    scale = min(1.0, short_side / min(width, height), _MAX_ASPECT * short_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))

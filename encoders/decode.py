"""Audio and video decoding for untrusted input, in isolated worker processes.

The bytes given here may come from anyone. They are checked against an allow-list of container
formats sniffed from the bytes themselves (encoders.sniff) before a worker sees them, decoded
from memory with the demuxer forced to that format and no protocol allowed (encoders.av_decode),
under caps on duration and frame size (encoders.limits) and, in the worker, a time limit and a
memory limit (encoders.workers). A file that breaks any of them fails alone, by name.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from encoders.errors import MediaDecodeError
from encoders.limits import (
    DEFAULT_MAX_AUDIO_SECONDS,
    DEFAULT_MAX_FRAME_PIXELS,
    DEFAULT_MAX_VIDEO_SECONDS,
    DEFAULT_MEMORY_LIMIT,
    DecodeLimits,
)
from encoders.sniff import AUDIO_CONTAINERS, VIDEO_CONTAINERS, Container, require
from encoders.workers import IsolatedRunner

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


class MediaDecoder:
    """Decodes audio and video files or bytes in isolated worker processes.

    Caps, each refused with a message naming it: `max_audio_seconds` (an audio input or a
    video's track), `max_video_seconds`, `max_frame_pixels` (width x height of one video frame)
    and `memory_limit` (bytes of address space per worker process; 0 for none).
    """

    def __init__(
        self,
        *,
        timeout: float = 120.0,
        sample_rate: int = 16_000,
        fps: float = 1.0,
        max_frames: int = 120,
        short_side: int = 256,
        workers: int = 2,
        max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
        max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS,
        max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        self.timeout = timeout
        self.workers = max(1, workers)
        self.sample_rate = sample_rate
        self.fps = fps
        self.max_frames = max_frames
        self.short_side = short_side
        self.limits = DecodeLimits(max_audio_seconds, max_video_seconds, max_frame_pixels)
        self.runner = IsolatedRunner(self.workers, memory_limit=memory_limit)

    def audio(self, data: bytes | Path, *, name: str, time_left: float | None = None) -> DecodedAudio:
        """`time_left`: the caller's remaining seconds (a request deadline); the decode is
        stopped then, or at the decoder's own timeout, whichever comes first."""
        args = (self.sample_rate, self.limits)
        return self._run(
            "encoders.av_decode:decode_audio", data, AUDIO_CONTAINERS, "audio", args, name, time_left
        )

    def video(self, data: bytes | Path, *, name: str, time_left: float | None = None) -> DecodedVideo:
        args = (self.fps, self.max_frames, self.sample_rate, self.short_side, self.limits)
        return self._run(
            "encoders.av_decode:decode_video", data, VIDEO_CONTAINERS, "video", args, name, time_left
        )

    def _run(
        self,
        target: str,
        data: bytes | Path,
        allowed: tuple[Container, ...],
        kind: str,
        args: tuple[Any, ...],
        name: str,
        time_left: float | None = None,
    ) -> Any:
        # Refuse what is not on the allow-list here, before a worker is involved. The worker
        # sniffs again from the bytes it actually opens (a file may change in between).
        _check_format(data, allowed, kind, name)
        # A path is opened by the worker itself; bytes travel beside the pickle, not copied into it.
        source = str(data) if isinstance(data, Path) else pickle.PickleBuffer(data)
        timeout = self.timeout if time_left is None else max(0.01, min(self.timeout, time_left))
        return self.runner.run(target, (source, *args), timeout=timeout, name=name)

    def start(self) -> None:
        self.runner.start()

    def close(self) -> None:
        self.runner.close()


def _check_format(data: bytes | Path, allowed: tuple[Container, ...], kind: str, name: str) -> None:
    try:
        if isinstance(data, Path):
            with data.open("rb") as f:
                require(f, allowed, kind=kind)
        elif not data:
            raise MediaDecodeError(f"empty {kind} bytes")
        else:
            require(io.BytesIO(data), allowed, kind=kind)
    except MediaDecodeError as exc:
        raise MediaDecodeError(f"{name}: {exc}") from None
    except OSError as exc:
        raise MediaDecodeError(f"{name}: cannot read file ({exc.strerror or exc})") from None

"""Caps on what one audio or video input may cost to decode.

Compressed media can be tiny and decode to gigabytes (an hour of silent FLAC is 0.6 MB, a 4K
video of a flat colour a few tens of KB), so each cap is checked against the stream headers
before decoding starts and again while decoding, since headers lie. Every refusal names the cap
and its value, so whoever meets it knows which setting to raise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Two hours: a feature film or a long podcast. At 16 kHz mono float32 that is 460 MB of samples.
DEFAULT_MAX_AUDIO_SECONDS = 7200.0
DEFAULT_MAX_VIDEO_SECONDS = 7200.0
# 4096 x 4096: 4K UHD, DCI 4K and 5K frames pass; 8K is refused (a reference frame alone is
# ~50 MB and a decoder keeps up to 16 of them).
DEFAULT_MAX_FRAME_PIXELS = 4096 * 4096
# Address space per decoder worker (RLIMIT_AS). Measured: an idle worker (Python, numpy, PyAV)
# maps 200 MiB (46 MiB resident); audio at the 2-hour cap peaks at 760 MiB mapped, 980 MiB when
# its header understates its length (the sample buffer grows by copying); 4096x4096 frames over
# two hours at 320 MiB. 2 GiB leaves twice that, and a worker that needs more fails alone.
DEFAULT_MEMORY_LIMIT = 2 * 1024**3


@dataclass(frozen=True)
class DecodeLimits:
    """Per-input caps, checked in the worker that decodes (see encoders.av_decode)."""

    max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS
    max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS

    def __post_init__(self) -> None:
        for name in ("max_audio_seconds", "max_video_seconds", "max_frame_pixels"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, not {value!r}")


def format_bytes(n: int) -> str:
    """A byte count for a message: '2 GiB', '300 MiB'."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"

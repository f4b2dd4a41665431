"""The bare decode work of bench/ingest.py, run in a pool of plain processes: each file decoded
exactly as the ingest's decode stage does (image fit, audio, video, text chunks), results thrown
away, nothing else. Kept apart from bench/ingest.py so the pool's processes import only this."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from encoders.av_decode import decode_audio, decode_video
from encoders.image_decode import ImageTarget, decode_fit
from encoders.limits import DecodeLimits
from encoders.text import chunk_text

_STATE: dict[str, Any] = {}


def init(
    target: ImageTarget, video: tuple[float, int, int, int], tokenizer_model: str, max_tokens: int
) -> None:
    """Per process, before any timing: the image target, video settings and a tokenizer."""
    import open_clip

    from encoders.bundle import register_builtin_configs

    register_builtin_configs()
    tok = open_clip.get_tokenizer(tokenizer_model)
    _STATE.update(target=target, video=video, tokenizer=tok, max_tokens=max_tokens, limits=DecodeLimits())


@lru_cache(maxsize=100_000)  # as Encoder.count_tokens caches
def _count_tokens(word: str) -> int:
    tok = _STATE["tokenizer"]
    return (
        len(tok.encode(word))
        if hasattr(tok, "encode")
        else len(tok.tokenizer.encode(word, add_special_tokens=False))
    )


def decode_one(job: tuple[str, str]) -> int:
    """Decode one (modality, path); returns 1."""
    modality, path = job
    fps, max_frames, rate, short_side = _STATE["video"]
    if modality == "image":
        decode_fit(path, _STATE["target"])
    elif modality == "audio":
        decode_audio(path, rate, _STATE["limits"])
    elif modality == "video":
        decode_video(path, fps, max_frames, rate, short_side, _STATE["limits"])
    else:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8-sig")
        n = _STATE["max_tokens"]
        chunk_text(text, _count_tokens, max_tokens=n, overlap_tokens=n // 4)
    return 1


def ready(_: int) -> int:
    return 1

"""Generated test media: nothing is downloaded."""

from __future__ import annotations

import io
import random
import wave
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP", ".gif": "GIF", ".bmp": "BMP", ".tiff": "TIFF"}


def make_image(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A distinct picture per seed: a coloured background with a few shapes."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))  # type: ignore[arg-type]
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.randrange(size[0] - 20), rng.randrange(size[1] - 20)
        box = (x0, y0, x0 + rng.randrange(10, 40), y0 + rng.randrange(10, 40))
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)  # type: ignore[arg-type]
        else:
            draw.rectangle(box, fill=colour)  # type: ignore[arg-type]
    return img


def image_bytes(seed: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    make_image(seed).save(buf, format=fmt)
    return buf.getvalue()


TEXTS = [
    "a red bicycle leaning against a brick wall",
    "sunset over a calm mountain lake",
    "a bowl of ramen with a soft boiled egg",
    "two kittens sleeping on a windowsill",
    "the quarterly financial report shows growth",
    "instructions for assembling a bookshelf",
]


def write_library(root: Path, n_images: int = 6) -> dict[str, Path]:
    """A small media library: images in every supported format, texts, one long text, a corrupt
    image, a truncated image and an unsupported file. Returns named paths."""
    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    exts = list(FORMATS)
    for i in range(n_images):
        ext = exts[i % len(exts)]
        p = root / "images" / f"img{i}{ext}"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(image_bytes(i, FORMATS[ext]))
        paths[f"img{i}"] = p
    for i, t in enumerate(TEXTS):
        p = root / "texts" / f"t{i}.txt"
        p.parent.mkdir(exist_ok=True)
        p.write_text(t)
        paths[f"t{i}"] = p
    long = root / "texts" / "long.md"
    long.write_text(" ".join(f"Paragraph {i} describes item number {i} in detail." for i in range(200)))
    paths["long"] = long
    corrupt = root / "broken" / "corrupt.jpg"
    corrupt.parent.mkdir(exist_ok=True)
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    paths["corrupt"] = corrupt
    truncated = root / "broken" / "truncated.png"
    truncated.write_bytes(image_bytes(99)[:200])
    paths["truncated"] = truncated
    (root / "notes.bin").write_bytes(b"\x00\x01")
    paths["unsupported"] = root / "notes.bin"
    return paths


# -- audio and video -------------------------------------------------------------------------

RATE = 16_000


def tone(pattern: int, seconds: float, rate: int = RATE, level: float = 0.3, seed: int = 0) -> np.ndarray:
    """A distinct sound per pattern: a two-tone chord that steps in pitch, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    base = 220.0 * 2 ** (pattern / 5)
    step = np.floor(t * 2) % 3  # pitch steps twice a second
    signal = np.sin(2 * np.pi * base * (1 + 0.25 * step) * t) + 0.5 * np.sin(2 * np.pi * base * 1.5 * t)
    signal = level * signal / 1.5 + 0.01 * rng.normal(size=t.shape)
    return signal.astype(np.float32)


def write_wav(path: Path, signal: np.ndarray, rate: int = RATE) -> Path:
    """16-bit PCM wav through the standard library."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(signal, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


_AUDIO_CODECS = {
    ".flac": ("flac", "flac"),
    ".mp3": ("mp3", "libmp3lame"),
    ".ogg": ("ogg", "libopus"),
    ".m4a": ("ipod", "aac"),
}


def write_audio(path: Path, signal: np.ndarray, rate: int = RATE) -> Path:
    """wav through the standard library; flac, mp3, ogg (opus) and m4a (aac) through PyAV."""
    if path.suffix == ".wav":
        return write_wav(path, signal, rate)
    fmt, codec = _AUDIO_CODECS[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    out_rate = 48_000 if codec == "libopus" else rate  # opus only runs at 48 kHz
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=out_rate, layout="mono")  # type: ignore[call-overload]
        _encode_audio(container, stream, signal, rate)
    return path


def _encode_audio(container: Any, stream: Any, signal: np.ndarray, rate: int) -> None:
    frame = av.AudioFrame.from_ndarray(signal[None, :].astype(np.float32), format="flt", layout="mono")
    frame.sample_rate = rate
    frame.pts = 0
    resampler = av.AudioResampler(
        format=stream.codec_context.format, layout="mono", rate=stream.codec_context.sample_rate
    )
    for chunk in resampler.resample(frame) + resampler.resample(None):
        for packet in stream.encode(chunk):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


_VIDEO_CODECS = {
    ".mp4": ("libx264", "aac"),
    ".mkv": ("libx264", "aac"),
    ".mov": ("libx264", "aac"),
    ".webm": ("libvpx-vp9", "libopus"),
    ".avi": ("mpeg4", "libmp3lame"),
}


def write_video(
    path: Path,
    frames: list[Image.Image],
    fps: int = 2,
    audio: np.ndarray | None = None,
    rate: int = RATE,
    gop: int | None = None,
) -> Path:
    """A video showing `frames` in turn at `fps`, with `audio` (mono, at `rate`) as its track and
    a keyframe every `gop` frames and nowhere else (the encoder's choice when None).
    x264 runs losslessly in 4:4:4 so a frame decodes to (almost) the pixels it was given."""
    vcodec, acodec = _VIDEO_CODECS[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        vs = container.add_stream(vcodec, rate=fps)  # type: ignore[call-overload]
        vs.width, vs.height = frames[0].size
        if vcodec == "libx264":
            vs.pix_fmt = "yuv444p"
            vs.options = {"qp": "0"} if gop is None else {"qp": "0", "sc_threshold": "0"}
        else:
            vs.pix_fmt = "yuv420p"
        if gop is not None:
            vs.gop_size = gop
        astream = None
        if audio is not None:
            out_rate = 48_000 if acodec == "libopus" else rate
            astream = container.add_stream(acodec, rate=out_rate, layout="mono")  # type: ignore[call-overload]
        for img in frames:
            for packet in vs.encode(av.VideoFrame.from_image(img)):
                container.mux(packet)
        for packet in vs.encode(None):
            container.mux(packet)
        if astream is not None and audio is not None:
            _encode_audio(container, astream, audio, rate)
    return path


def extract_audio_track(video: Path, out: Path) -> Path:
    """The video's audio track, decoded and written as 16 kHz wav: 'the same audio' as the video."""
    with av.open(str(video)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        chunks = [
            f.to_ndarray().reshape(-1) for fr in container.decode(audio=0) for f in resampler.resample(fr)
        ]
    return write_wav(out, np.concatenate(chunks))


# -- hostile media: small files that decode to a lot -----------------------------------------


def write_flat_video(path: Path, size: tuple[int, int], frames: int, fps: int = 1) -> Path:
    """An h264 mp4 of `frames` identical frames of one flat colour: tens of KB at 4K, because
    every frame after the first is a skip. Decoded in full it is width x height x 3 bytes a frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    picture = np.full((height, width, 3), (40, 120, 200), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
    with av.open(str(path), "w", format="mp4") as container:
        vs: Any = container.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"preset": "ultrafast"}
        for i in range(frames):
            frame.pts = i
            for packet in vs.encode(frame):
                container.mux(packet)
        for packet in vs.encode(None):
            container.mux(packet)
    return path


def write_silence_flac(path: Path, seconds: float, rate: int = RATE) -> Path:
    """FLAC of `seconds` of silence: an hour is ~0.6 MB on disk and 230 MB of float32 at 16 kHz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = 1 << 18
    zeros = np.zeros((1, block), dtype=np.int16)
    total = int(seconds * rate)
    with av.open(str(path), "w", format="flac") as container:
        stream: Any = container.add_stream("flac", rate=rate, layout="mono")
        stream.format = "s16"
        for start in range(0, total, block):
            frame = av.AudioFrame.from_ndarray(
                zeros[:, : min(block, total - start)], format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def with_flac_total_samples(data: bytes, total: int) -> bytes:
    """FLAC bytes whose STREAMINFO header claims `total` samples (0: unknown): a header that lies."""
    if data[:4] != b"fLaC":
        raise ValueError("not FLAC bytes")
    # STREAMINFO follows the 4-byte marker and a 4-byte block header; its bytes 10..17 pack the
    # sample rate (20 bits), channels (3), bits per sample (5) and the total sample count (36).
    field = int.from_bytes(data[18:26], "big")
    field = (field & ~((1 << 36) - 1)) | (total & ((1 << 36) - 1))
    return data[:18] + field.to_bytes(8, "big") + data[26:]

"""Digits world: a small generated media library for training and demoing multimodal search.

Every item shows or sounds like one digit (0-9), so the digit is the ground-truth group:

- images/: scikit-learn's bundled handwritten digits (all 1797), each rendered as a 64x64 RGB PNG;
- audio/: 16 kHz mono WAV clips, one tone pattern per digit (pitch, beep count, overtone);
- videos/: 64x64 H.264 clips of a digit drifting across the frame, with that digit's sound as AAC;
- train.jsonl / test.jsonl: caption and cross-modal pairs in the long manifest form
  (see trainer.manifest), paths relative to the library folder.

Train and test never share a source sample: images are split by sample index, and sounds are drawn
from different seeds. Nothing is downloaded. The same seed gives byte-identical manifests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import wave
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SAMPLE_RATE = 16_000
IMAGE_SIZE = 64
VIDEO_FPS = 4
SPLITS = ("train", "test")
MARKER = "sample.json"
# Bump when the generated content changes, so an old library on disk is not taken as current.
FORMAT_VERSION = 1

_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_CAPTIONS: dict[str, tuple[str, ...]] = {
    "any": (
        "{word}",
        "a {word}",
        "the number {num}",
        "the digit {word}",
        "the number {word}",
        "digit {num}",
    ),
    "image": (
        "a handwritten {word}",
        "a picture of a {num}",
        "a drawing of the number {word}",
        "a handwritten digit {num}",
    ),
    "audio": ("the sound of {word}", "the tone for {num}", "what {word} sounds like"),
    "video": ("a video of a {word}", "a moving {num}", "a handwritten {word} sliding across the screen"),
}

# Seed-sequence tags, so each kind of random draw has its own independent stream.
_SPLIT_SEED, _IMAGE_SEED, _AUDIO_SEED, _VIDEO_SEED, _PAIR_SEED = range(5)

# Base pitch per digit, spaced evenly on a log scale from 250 Hz to 1500 Hz (about 3.5 semitones apart).
_BASE_HZ = tuple(250.0 * 6.0 ** (d / 9) for d in range(10))
_BEEP_S, _STEP_S, _PAUSE_S = 0.12, 0.2, 0.3


@dataclass(frozen=True)
class SampleSummary:
    """What a generated library holds. Counts cover both splits; pairs are manifest lines."""

    images: int
    audio: int
    videos: int
    train_pairs: int
    test_pairs: int
    train_manifest: Path
    test_manifest: Path
    long_videos: int = 0  # minute-long videos with one queried segment (hard world)


def digit_word(d: int) -> str:
    """The English word for a digit: 0 -> "zero" ... 9 -> "nine"."""
    if not 0 <= d <= 9:
        raise ValueError(f"not a digit: {d}")
    return _WORDS[d]


def seeded_rng(seed: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng([seed, *tags])


# --- images ---------------------------------------------------------------------------------------


def glyph_coverage(pixels: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 digit (values 0..16) scaled smoothly to size x size, as coverage in 0..1."""
    small = Image.fromarray((pixels * (255 / 16)).round().astype(np.uint8), mode="L")
    return np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255


def compose(glyph: np.ndarray, x: int, y: int, background: np.ndarray, ink: np.ndarray) -> Image.Image:
    """Light ink on a dark 64x64 background, with the glyph's top-left corner at (x, y)."""
    alpha = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)
    h, w = glyph.shape
    alpha[y : y + h, x : x + w, 0] = glyph
    rgb = background + (ink - background) * alpha
    return Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8), mode="RGB")


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    background = np.full(3, rng.uniform(0, 30), dtype=np.float32)
    ink = rng.uniform(200, 255, size=3).astype(np.float32)
    return background, ink


def render_digit(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """One 8x8 digit as a 64x64 RGB image: about 48 px tall, at a small random offset."""
    size = int(rng.integers(44, 53))
    glyph = glyph_coverage(pixels, size)
    x, y = (int(v) for v in rng.integers(0, IMAGE_SIZE - size + 1, size=2))
    return compose(glyph, x, y, *_colours(rng))


def split_indices(n: int, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    order = seeded_rng(seed, _SPLIT_SEED).permutation(n)
    n_test = round(n * test_fraction)
    return {"train": np.sort(order[n_test:]), "test": np.sort(order[:n_test])}


def _write_images(
    root: Path, images: np.ndarray, targets: np.ndarray, split: dict[str, np.ndarray], seed: int
) -> dict[str, dict[int, list[int]]]:
    """Writes every sample to its split's folder; returns split -> digit -> sample indices."""
    by_digit: dict[str, dict[int, list[int]]] = {}
    for name, indices in split.items():
        folder = root / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        by_digit[name] = {d: [] for d in range(10)}
        for i in indices.tolist():
            digit = int(targets[i])
            # Level 1: same size as the default on 64x64 images, in half the time.
            image = render_digit(images[i], seeded_rng(seed, _IMAGE_SEED, i))
            image.save(folder / f"{digit}_{i:04d}.png", compress_level=1)
            by_digit[name][digit].append(i)
    return by_digit


def _image_path(split: str, digit: int, index: int) -> str:
    return f"images/{split}/{digit}_{index:04d}.png"


# --- audio ----------------------------------------------------------------------------------------


def digit_sound(digit: int, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy float32 clip in [-1, 1] that identifies `digit`.

    The pattern: 1 + digit % 4 short beeps then a pause, repeated; the pitch rises with the digit and
    the overtone ratio cycles with digit % 3, so digits that share a beep count still differ in pitch.
    Pitch, tempo, start, level (peak 0.1-0.8) and noise vary per clip.
    """
    t = np.arange(n_samples, dtype=np.float64) / SAMPLE_RATE
    freq = _BASE_HZ[digit] * rng.uniform(0.98, 1.02)
    overtone = 2.0 + 0.5 * (digit % 3)
    tone = np.sin(2 * np.pi * freq * t) + 0.4 * np.sin(
        2 * np.pi * freq * overtone * t + rng.uniform(0, np.pi)
    )

    beeps = 1 + digit % 4
    period = beeps * _STEP_S + _PAUSE_S
    local = ((t - rng.uniform(0, 0.2)) * rng.uniform(0.9, 1.1)) % period
    within = local % _STEP_S
    ramp = 0.01  # 10 ms fades, so beeps start and stop without clicks
    envelope = np.clip(np.minimum(within, _BEEP_S - within) / ramp, 0, 1)
    envelope[(local // _STEP_S >= beeps) | (within >= _BEEP_S)] = 0

    signal = tone * envelope
    peak = np.abs(signal).max()
    level = rng.uniform(0.1, 0.8)
    signal = signal * (level / peak) if peak > 0 else signal
    signal += rng.normal(0, level * rng.uniform(0.02, 0.08), n_samples)
    return np.clip(signal, -1, 1).astype(np.float32)


def write_wav(path: Path, signal: np.ndarray) -> None:
    pcm = (signal * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())


def _write_audio(root: Path, counts: tuple[int, int], seed: int) -> dict[str, list[tuple[int, str]]]:
    """Writes the clips; returns split -> [(digit, relative path)]."""
    written: dict[str, list[tuple[int, str]]] = {}
    for s, (name, count) in enumerate(zip(SPLITS, counts, strict=True)):
        (root / "audio" / name).mkdir(parents=True, exist_ok=True)
        written[name] = []
        for digit in range(10):
            for k in range(count):
                rng = seeded_rng(seed, _AUDIO_SEED, s, digit, k)
                seconds = rng.uniform(1.0, 3.0)
                rel = f"audio/{name}/{digit}_{k:03d}.wav"
                write_wav(root / rel, digit_sound(digit, round(seconds * SAMPLE_RATE), rng))
                written[name].append((digit, rel))
    return written


# --- videos ---------------------------------------------------------------------------------------


def _video_frames(pixels: np.ndarray, n_frames: int, rng: np.random.Generator) -> list[Image.Image]:
    """A smaller copy of the digit drifting a few pixels a frame, bouncing off the edges."""
    size = int(rng.integers(30, 41))
    glyph = glyph_coverage(pixels, size)
    background, ink = _colours(rng)
    room = IMAGE_SIZE - size
    pos = rng.integers(0, room + 1, size=2)
    vel = rng.integers(2, 6, size=2) * rng.choice([-1, 1], size=2)
    frames = []
    for _ in range(n_frames):
        frames.append(compose(glyph, int(pos[0]), int(pos[1]), background, ink))
        pos = pos + vel
        for axis in range(2):
            if not 0 <= pos[axis] <= room:
                vel[axis] = -vel[axis]
                pos[axis] = int(np.clip(pos[axis], 0, room))
    return frames


def write_mp4(
    path: Path, frames: Sequence[Image.Image], sound: np.ndarray | None, fps: int = VIDEO_FPS
) -> None:
    """H.264 frames at `fps` and, when `sound` is given, that 16 kHz mono track as AAC."""
    import av  # imported here: only videos need it

    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = IMAGE_SIZE, IMAGE_SIZE, "yuv420p"
        # Every stream is added before the first packet is muxed (the header is written then).
        audio = None if sound is None else container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        for n, img in enumerate(frames):
            frame = av.VideoFrame.from_image(img)
            frame.pts = n
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is None or sound is None:
            return
        # The AAC encoder re-chunks the one long frame into its own frame size.
        chunk = av.AudioFrame.from_ndarray(sound[None, :], format="flt", layout="mono")
        chunk.sample_rate, chunk.pts = SAMPLE_RATE, 0
        container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))


def _write_videos(
    root: Path,
    counts: tuple[int, int],
    images: np.ndarray,
    by_digit: dict[str, dict[int, list[int]]],
    seed: int,
) -> dict[str, list[tuple[int, str, int]]]:
    """Writes the videos; returns split -> [(digit, relative path, source sample index)]."""
    written: dict[str, list[tuple[int, str, int]]] = {}
    for s, (name, count) in enumerate(zip(SPLITS, counts, strict=True)):
        (root / "videos" / name).mkdir(parents=True, exist_ok=True)
        written[name] = []
        for digit in range(10):
            for k in range(count):
                rng = seeded_rng(seed, _VIDEO_SEED, s, digit, k)
                source = int(rng.choice(_need(by_digit, name, digit)))
                n_frames = int(rng.integers(2 * VIDEO_FPS, 4 * VIDEO_FPS + 1))
                frames = _video_frames(images[source], n_frames, rng)
                sound = digit_sound(digit, n_frames * SAMPLE_RATE // VIDEO_FPS, rng)
                rel = f"videos/{name}/{digit}_{k:03d}.mp4"
                write_mp4(root / rel, frames, sound)
                written[name].append((digit, rel, source))
    return written


def _need(by_digit: dict[str, dict[int, list[int]]], split: str, digit: int) -> list[int]:
    found = by_digit[split][digit]
    if not found:
        raise ValueError(f"the {split} split has no image of digit {digit}; use a different test_fraction")
    return found


# --- manifests ------------------------------------------------------------------------------------


def caption(digit: int, modality: str, rng: np.random.Generator) -> str:
    """A random caption for `digit`, from the shared phrasings and those for `modality`."""
    choices = _CAPTIONS["any"] + _CAPTIONS.get(modality, ())
    template = choices[int(rng.integers(len(choices)))]
    return template.format(word=digit_word(digit), num=digit)


def _pairs(
    split: str,
    by_digit: dict[str, dict[int, list[int]]],
    audio: list[tuple[int, str]],
    videos: list[tuple[int, str, int]],
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    def pair(a: dict[str, str], b: dict[str, str], digit: int) -> dict[str, Any]:
        return {"a": a, "b": b, "group": str(digit)}

    def text(digit: int, modality: str) -> dict[str, str]:
        return {"text": caption(digit, modality, rng), "modality": "text"}

    def other_image(digit: int, avoid: int = -1) -> dict[str, str]:
        # Prefer a different sample than the video's own, so the pair is about the digit, not the picture.
        pool = [i for i in _need(by_digit, split, digit) if i != avoid] or _need(by_digit, split, digit)
        return {"path": _image_path(split, digit, int(rng.choice(pool))), "modality": "image"}

    lines = []
    for digit, indices in by_digit[split].items():
        for i in indices:
            lines.append(
                pair({"path": _image_path(split, digit, i), "modality": "image"}, text(digit, "image"), digit)
            )
    for digit, rel in audio:
        item = {"path": rel, "modality": "audio"}
        lines.append(pair(item, text(digit, "audio"), digit))
        lines.append(pair(item, other_image(digit), digit))
    for digit, rel, source in videos:
        item = {"path": rel, "modality": "video"}
        lines.append(pair(item, text(digit, "video"), digit))
        lines.append(pair(item, other_image(digit, avoid=source), digit))
    return [lines[j] for j in rng.permutation(len(lines))]


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


# --- the library ----------------------------------------------------------------------------------


def _check_args(
    audio_per_digit: tuple[int, int], videos_per_digit: tuple[int, int], test_fraction: float
) -> None:
    for name, counts in (("audio_per_digit", audio_per_digit), ("videos_per_digit", videos_per_digit)):
        if len(counts) != 2 or any(int(c) != c or c < 0 for c in counts):
            raise ValueError(f"{name} must be two non-negative integers (train, test), got {counts!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")


def existing_library(root: Path, params: dict[str, Any]) -> SampleSummary | None:
    """The summary of a complete library already in `root` built with `params`, else None."""
    try:
        marker = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("params") != params:
        return None
    if not all((root / f"{name}.jsonl").is_file() for name in SPLITS):
        return None
    try:
        return library_summary(root, marker["counts"])
    except (KeyError, TypeError):
        return None


def library_summary(root: Path, counts: dict[str, int]) -> SampleSummary:
    return SampleSummary(
        **{key: int(counts[key]) for key in ("images", "audio", "videos", "train_pairs", "test_pairs")},
        train_manifest=root / "train.jsonl",
        test_manifest=root / "test.jsonl",
        long_videos=int(counts.get("long_videos", 0)),
    )


def clear_library(root: Path, folders: Sequence[str] = ("images", "audio", "videos")) -> None:
    """Removes what a previous run wrote (the marker first, so a half-cleared library is never 'complete')."""
    (root / MARKER).unlink(missing_ok=True)
    for name in SPLITS:
        (root / f"{name}.jsonl").unlink(missing_ok=True)
    for folder in folders:
        shutil.rmtree(root / folder, ignore_errors=True)


def generate_sample_library(
    out_dir: str | Path,
    *,
    seed: int = 0,
    audio_per_digit: tuple[int, int] = (24, 6),
    videos_per_digit: tuple[int, int] = (8, 3),
    test_fraction: float = 0.2,
    force: bool = False,
) -> SampleSummary:
    """Writes the digits-world library into `out_dir` and returns what it holds.

    `audio_per_digit` and `videos_per_digit` are (train, test) counts per digit; `test_fraction` of
    the 1797 digit images go to the test split. When `out_dir` already holds a complete library
    made with the same parameters it is returned as is, unless `force` is set.
    """
    _check_args(audio_per_digit, videos_per_digit, test_fraction)
    root = Path(out_dir)
    params = {
        "version": FORMAT_VERSION,
        "seed": seed,
        "audio_per_digit": list(audio_per_digit),
        "videos_per_digit": list(videos_per_digit),
        "test_fraction": test_fraction,
    }
    if not force and (found := existing_library(root, params)) is not None:
        return found
    root.mkdir(parents=True, exist_ok=True)
    clear_library(root)

    from sklearn.datasets import load_digits  # imported here: slow to import, and only needed to build

    digits = load_digits()
    images, targets = digits.images, digits.target
    split = split_indices(len(targets), test_fraction, seed)
    by_digit = _write_images(root, images, targets, split, seed)
    audio = _write_audio(root, audio_per_digit, seed)
    videos = _write_videos(root, videos_per_digit, images, by_digit, seed)

    n_pairs = {}
    for s, name in enumerate(SPLITS):
        lines = _pairs(name, by_digit, audio[name], videos[name], seeded_rng(seed, _PAIR_SEED, s))
        write_jsonl(root / f"{name}.jsonl", lines)
        n_pairs[name] = len(lines)
    counts = {
        "images": len(targets),
        "audio": 10 * sum(audio_per_digit),
        "videos": 10 * sum(videos_per_digit),
        "train_pairs": n_pairs["train"],
        "test_pairs": n_pairs["test"],
    }
    (root / MARKER).write_text(
        json.dumps({"params": params, "counts": counts}, indent=2) + "\n", encoding="utf-8"
    )
    return library_summary(root, counts)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m trainer.sample_data OUT_DIR`: generate the library and print its summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate even if a matching library exists")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    summary = generate_sample_library(args.out_dir, seed=args.seed, force=args.force)
    shown = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(summary).items()}
    print(json.dumps(shown, indent=2))
    print(f"took {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

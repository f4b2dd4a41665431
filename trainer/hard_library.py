"""Writes the hard-world library (see trainer.hard_world for its classes) into a folder:

- images/{split}/{look}__{n}.png: 64x64 looks; digit shapes from scikit-learn's handwritten digits;
- audio/{split}/{sound}__{k}.wav: 16 kHz mono clips of 1.5-2.5 s;
- videos/{split}/{look}__{k}.mp4: 2 s silent shots of one look;
- long/test/long_{k}.mp4: 60-75 s silent videos of 2-6 s shots in which one *target* look is
  shown for 5 s, starting off the indexer's 5 s grid (so it straddles two segments), among
  distractor shots of which half are one-attribute confusers of the target; no target is shown
  anywhere else (distractors are drawn from the other looks). long/test/truth.json lists every
  shot and the target of each video, with a caption naming it;
- train.jsonl / test.jsonl: image-text, audio-text, video-text and video-image pairs.

Train and test share no digit sample, no clip and no file. The same seed gives the same files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.hard_world import Look, Sound, all_looks, all_sounds, draw, neighbours, shot_frames, sound_clip
from trainer.sample_data import (
    MARKER,
    SAMPLE_RATE,
    SPLITS,
    SampleSummary,
    clear_library,
    existing_library,
    library_summary,
    seeded_rng,
    split_indices,
    write_jsonl,
    write_mp4,
    write_wav,
)

WORLD = "hard"
FORMAT_VERSION = 1
FOLDERS = ("images", "audio", "videos", "long")
LONG_TRUTH = "long/test/truth.json"
CLIP_SECONDS = 2  # short clips: two sampled frames each (frames are most of a training step's cost)
SEGMENT_SECONDS = 5  # the indexer's segment length; long-video targets last one segment
LONG_FPS = 2  # frames written per second; the decoder samples one a second
LONG_SECONDS = (60, 75)
SHOT_SECONDS = (2, 6)  # distractor shots
HANDWRITING = 0.3  # share of a real handwritten sample in each digit shape (the rest: the digit's mean)

_IMAGE_SEED, _SOUND_SEED, _CLIP_SEED, _LONG_SEED, _PAIR_SEED, _TARGET_SEED = range(20, 26)


@dataclass(frozen=True)
class Shot:
    group: str
    t_start: float
    t_end: float


@dataclass(frozen=True)
class LongVideo:
    path: str  # relative to the library
    duration: float
    target: Shot
    caption: str
    shots: tuple[Shot, ...]


def group_of(source: str | Path) -> str:
    """The class of a generated image, sound or clip, from its file name."""
    return Path(source).name.split("__", 1)[0]


def load_long_videos(root: str | Path) -> list[LongVideo]:
    raw = json.loads((Path(root) / LONG_TRUTH).read_text(encoding="utf-8"))
    return [
        LongVideo(
            v["path"],
            float(v["duration"]),
            Shot(**v["target"]),
            v["caption"],
            tuple(Shot(**s) for s in v["shots"]),
        )
        for v in raw
    ]


class _Digits:
    """Digit shapes: each digit's mean over scikit-learn's 8x8 samples (a clean, font-like
    prototype) blended with one sample of the split (`handwriting` of it), so every picture of a
    digit varies a little and train and test never share a sample. The shape is kept legible for
    the tiny model: what makes the world hard is how few confusers a random batch holds."""

    def __init__(self, seed: int, test_fraction: float, handwriting: float) -> None:
        from sklearn.datasets import load_digits  # imported here: slow to import, only needed to build

        digits = load_digits()
        self.images, targets = digits.images, digits.target
        self.handwriting = handwriting
        self.prototypes = {d: self.images[targets == d].mean(axis=0) for d in range(10)}
        split = split_indices(len(targets), test_fraction, seed)
        self.by_digit = {name: {d: idx[targets[idx] == d] for d in range(10)} for name, idx in split.items()}

    def pick(self, split: str, digit: int, rng: np.random.Generator) -> np.ndarray:
        pool = self.by_digit[split][digit]
        if not len(pool):
            raise ValueError(f"the {split} split has no sample of digit {digit}; use another test_fraction")
        sample = np.asarray(self.images[int(rng.choice(pool))])
        proto = self.prototypes[digit] * (16 / self.prototypes[digit].max())  # full ink, like a sample
        return (1 - self.handwriting) * proto + self.handwriting * sample


def _write_images(root: Path, digits: _Digits, counts: Sequence[int], seed: int) -> dict[str, list[str]]:
    written: dict[str, list[str]] = {}
    for s, (split, count) in enumerate(zip(SPLITS, counts, strict=True)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        written[split] = []
        for n, look in enumerate(all_looks()):
            for k in range(count):
                rng = seeded_rng(seed, _IMAGE_SEED, s, n, k)
                rel = f"images/{split}/{look.key}__{k:03d}.png"
                draw(look, digits.pick(split, look.digit, rng), rng).render().save(
                    root / rel, compress_level=1
                )
                written[split].append(rel)
    return written


def _write_sounds(root: Path, counts: Sequence[int], seed: int) -> dict[str, list[str]]:
    written: dict[str, list[str]] = {}
    for s, (split, count) in enumerate(zip(SPLITS, counts, strict=True)):
        (root / "audio" / split).mkdir(parents=True, exist_ok=True)
        written[split] = []
        for n, sound in enumerate(all_sounds()):
            for k in range(count):
                rng = seeded_rng(seed, _SOUND_SEED, s, n, k)
                rel = f"audio/{split}/{sound.key}__{k:03d}.wav"
                write_wav(root / rel, sound_clip(sound, round(rng.uniform(1.5, 2.5) * SAMPLE_RATE), rng))
                written[split].append(rel)
    return written


def _write_clips(root: Path, digits: _Digits, counts: Sequence[int], seed: int) -> dict[str, list[str]]:
    written: dict[str, list[str]] = {}
    for s, (split, count) in enumerate(zip(SPLITS, counts, strict=True)):
        (root / "videos" / split).mkdir(parents=True, exist_ok=True)
        written[split] = []
        for n, look in enumerate(all_looks()):
            for k in range(count):
                rng = seeded_rng(seed, _CLIP_SEED, s, n, k)
                drawing = draw(look, digits.pick(split, look.digit, rng), rng)
                rel = f"videos/{split}/{look.key}__{k:03d}.mp4"
                write_mp4(root / rel, shot_frames(drawing, CLIP_SECONDS * LONG_FPS, rng), None, LONG_FPS)
                written[split].append(rel)
    return written


def _targets(n: int, seed: int) -> list[Look]:
    looks = all_looks()
    return [looks[i] for i in seeded_rng(seed, _TARGET_SEED).choice(len(looks), size=n, replace=False)]


def _fillers(t0: int, t1: int, target: Look, pool: list[str], rng: np.random.Generator) -> list[Shot]:
    """Distractor shots covering [t0, t1): half one-attribute confusers of the target."""
    confusers = neighbours(target.key, pool)
    shots: list[Shot] = []
    t = t0
    while t < t1:
        length = int(rng.integers(SHOT_SECONDS[0], SHOT_SECONDS[1] + 1))
        if t1 - (t + length) < SHOT_SECONDS[0]:
            length = t1 - t  # no sliver of a shot at the end
        previous = shots[-1].group if shots else target.key
        choices = [g for g in (confusers if rng.random() < 0.5 else pool) if g != previous]
        shots.append(Shot(str(rng.choice(choices)), t, t + length))
        t += length
    return shots


def _write_long_videos(root: Path, digits: _Digits, count: int, seed: int) -> list[LongVideo]:
    folder = root / "long" / "test"
    folder.mkdir(parents=True, exist_ok=True)
    targets = _targets(count, seed)
    taken = {t.key for t in targets}
    pool = [look.key for look in all_looks() if look.key not in taken]
    videos = []
    for k, target in enumerate(targets):
        rng = seeded_rng(seed, _LONG_SEED, k)
        duration = int(rng.integers(LONG_SECONDS[0], LONG_SECONDS[1] + 1))
        # The target starts 1-4 s into a 5 s segment: content does not follow the indexer's grid.
        seg = SEGMENT_SECONDS
        start = seg * int(rng.integers(1, duration // seg - 2)) + int(rng.integers(1, seg))
        shot = Shot(target.key, start, start + seg)
        shots = [
            *_fillers(0, start, target, pool, rng),
            shot,
            *_fillers(start + seg, duration, target, pool, rng),
        ]
        frames = []
        for s in shots:
            look = Look.parse(s.group)
            drawing = draw(look, digits.pick("test", look.digit, rng), rng)
            frames += shot_frames(drawing, int(s.t_end - s.t_start) * LONG_FPS, rng)
        rel = f"long/test/long_{k:03d}.mp4"
        write_mp4(root / rel, frames, None, LONG_FPS)
        videos.append(LongVideo(rel, float(duration), shot, target.caption("video", rng), tuple(shots)))
    (root / LONG_TRUTH).write_text(json.dumps([asdict(v) for v in videos], indent=1) + "\n", encoding="utf-8")
    return videos


def _pairs(
    images: list[str], sounds: list[str], clips: list[str], rng: np.random.Generator
) -> list[dict[str, Any]]:
    def item(rel: str, modality: str) -> dict[str, str]:
        return {"path": rel, "modality": modality}

    def text(caption: str) -> dict[str, str]:
        return {"text": caption, "modality": "text"}

    by_look: dict[str, list[str]] = {}
    for rel in images:
        by_look.setdefault(group_of(rel), []).append(rel)
    lines = [
        {
            "a": item(rel, "image"),
            "b": text(Look.parse(group_of(rel)).caption("image", rng)),
            "group": group_of(rel),
        }
        for rel in images
    ]
    for rel in sounds:
        pitch, timbre, rhythm = group_of(rel).split("-")
        sound = Sound(pitch, timbre, rhythm)
        lines.append({"a": item(rel, "audio"), "b": text(sound.caption(rng)), "group": sound.key})
    for rel in clips:
        look = Look.parse(group_of(rel))
        lines.append({"a": item(rel, "video"), "b": text(look.caption("video", rng)), "group": look.key})
        other = str(rng.choice(by_look[look.key]))
        lines.append({"a": item(rel, "video"), "b": item(other, "image"), "group": look.key})
    return [lines[j] for j in rng.permutation(len(lines))]


def _check(
    counts: Mapping[str, Sequence[int]], long_videos: int, test_fraction: float, handwriting: float
) -> None:
    for name, pair in counts.items():
        if len(pair) != 2 or any(int(c) != c or c < 0 for c in pair):
            raise ValueError(f"{name} must be two non-negative integers (train, test), got {pair!r}")
    if counts["images_per_look"][0] < 1 or counts["images_per_look"][1] < 1:
        raise ValueError("images_per_look needs at least one image per look in each split")
    if not 0 <= long_videos <= 60:
        raise ValueError(f"long_videos must be between 0 and 60, got {long_videos}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    if not 0 <= handwriting <= 1:
        raise ValueError(f"handwriting must be between 0 and 1, got {handwriting}")


def generate_hard_library(
    out_dir: str | Path,
    *,
    seed: int = 0,
    images_per_look: tuple[int, int] = (10, 2),
    sounds_per_class: tuple[int, int] = (8, 2),
    clips_per_look: tuple[int, int] = (1, 1),
    long_videos: int = 48,
    handwriting: float = HANDWRITING,
    test_fraction: float = 0.2,
    force: bool = False,
) -> SampleSummary:
    """Writes the hard-world library into `out_dir` and returns what it holds. Counts are
    (train, test) per class; a complete library made with the same parameters is reused unless
    `force` is set."""
    counts = {
        "images_per_look": images_per_look,
        "sounds_per_class": sounds_per_class,
        "clips_per_look": clips_per_look,
    }
    _check(counts, long_videos, test_fraction, handwriting)
    root = Path(out_dir)
    params: dict[str, Any] = {
        "world": WORLD,
        "version": FORMAT_VERSION,
        "seed": seed,
        **{k: list(v) for k, v in counts.items()},
        "long_videos": long_videos,
        "handwriting": handwriting,
        "test_fraction": test_fraction,
    }
    if not force and (found := existing_library(root, params)) is not None:
        return found
    root.mkdir(parents=True, exist_ok=True)
    clear_library(root, FOLDERS)

    digits = _Digits(seed, test_fraction, handwriting)
    images = _write_images(root, digits, images_per_look, seed)
    sounds = _write_sounds(root, sounds_per_class, seed)
    clips = _write_clips(root, digits, clips_per_look, seed)
    long = _write_long_videos(root, digits, long_videos, seed)
    n_pairs = {}
    for s, split in enumerate(SPLITS):
        lines = _pairs(images[split], sounds[split], clips[split], seeded_rng(seed, _PAIR_SEED, s))
        write_jsonl(root / f"{split}.jsonl", lines)
        n_pairs[split] = len(lines)
    summary = {
        "images": sum(len(v) for v in images.values()),
        "audio": sum(len(v) for v in sounds.values()),
        "videos": sum(len(v) for v in clips.values()),
        "long_videos": len(long),
        "train_pairs": n_pairs["train"],
        "test_pairs": n_pairs["test"],
    }
    (root / MARKER).write_text(
        json.dumps({"params": params, "counts": summary}, indent=2) + "\n", encoding="utf-8"
    )
    return library_summary(root, summary)

"""The hard world: compositional classes one attribute apart, captions naming every attribute,
sounds that differ in one attribute, and minute-long videos whose target straddles two segments."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from trainer.hard_library import (
    LONG_SECONDS,
    SEGMENT_SECONDS,
    generate_hard_library,
    group_of,
    load_long_videos,
)
from trainer.hard_world import (
    CORNERS,
    PITCHES,
    RHYTHMS,
    Look,
    Sound,
    all_looks,
    all_sounds,
    confusable_sets,
    neighbours,
    sound_clip,
)
from trainer.sample_data import SAMPLE_RATE, SampleSummary, digit_word
from trainer.worlds import generate_world

SMALL = {"images_per_look": (1, 1), "sounds_per_class": (1, 1), "clips_per_look": (0, 1), "long_videos": 3}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleSummary]:
    root = tmp_path_factory.mktemp("hard")
    return root, generate_hard_library(root, **SMALL)  # type: ignore[arg-type]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_classes_are_one_attribute_from_their_confusers() -> None:
    looks, sounds = [x.key for x in all_looks()], [x.key for x in all_sounds()]
    assert len(looks) == 320 and len(sounds) == 64
    assert Look.parse("7-red-tl-small") == Look(7, "red", "tl", "small")
    # 9 other digits, 3 colours, 3 corners, 1 size; 3 pitches, 3 timbres, 3 rhythms.
    assert all(len(neighbours(k, looks)) == 16 for k in looks)
    assert all(len(neighbours(k, sounds)) == 9 for k in sounds)
    sizes: dict[str, list[int]] = {}
    for attribute, members in confusable_sets(looks + sounds):
        sizes.setdefault(attribute, []).append(len(members))
        parts = [m.split("-") for m in members]
        assert all(sum(a != b for a, b in zip(parts[0], p, strict=True)) <= 1 for p in parts)
    assert {k: (len(v), set(v)) for k, v in sizes.items()} == {
        "digit": (32, {10}),
        "colour": (80, {4}),
        "corner": (80, {4}),
        "size": (160, {2}),
        "pitch": (16, {4}),
        "timbre": (16, {4}),
        "rhythm": (16, {4}),
    }
    assert not list(confusable_sets(["3", "5", "8"]))  # one-part groups (digits world) have none


def test_captions_name_every_attribute() -> None:
    rng = np.random.default_rng(0)
    for look in all_looks()[::7]:
        for modality in ("image", "video"):
            text = look.caption(modality, rng)
            assert look.colour in text and look.size in text and CORNERS[look.corner][0] in text
            assert str(look.digit) in text or digit_word(look.digit) in text
    for sound in all_sounds()[::5]:
        text = sound.caption(rng)
        assert PITCHES[sound.pitch][0] in text and RHYTHMS[sound.rhythm][0] in text


def test_sounds_differ_in_the_named_attribute() -> None:
    def peak_hz(sound: Sound) -> float:
        clip = sound_clip(sound, 2 * SAMPLE_RATE, np.random.default_rng(1))
        spectrum = np.abs(np.fft.rfft(clip))
        return float(np.fft.rfftfreq(len(clip), 1 / SAMPLE_RATE)[spectrum.argmax()])

    low, high = peak_hz(Sound("low", "pure", "single")), peak_hz(Sound("high", "pure", "single"))
    assert abs(low - 220) < 10 and abs(high - 440) < 15

    def onsets(rhythm: str) -> int:
        clip = sound_clip(Sound("mid", "pure", rhythm), 2 * SAMPLE_RATE, np.random.default_rng(2))
        loud = np.convolve(np.abs(clip), np.ones(160) / 160, mode="same") > 0.5 * np.abs(clip).max() * 0.5
        return int((np.diff(loud.astype(int)) == 1).sum())

    assert onsets("single") < onsets("double") < onsets("triple") < onsets("rapid")


def test_library_manifests_and_splits(library: tuple[Path, SampleSummary]) -> None:
    root, summary = library
    assert (summary.images, summary.audio, summary.videos, summary.long_videos) == (640, 128, 320, 3)
    train, test = _lines(summary.train_manifest), _lines(summary.test_manifest)
    assert len(train) == summary.train_pairs == 320 + 64
    assert len(test) == summary.test_pairs == 320 + 64 + 2 * 320
    for line in train + test:
        for side in (line["a"], line["b"]):
            if "path" in side:
                assert (root / side["path"]).is_file() and group_of(side["path"]) == line["group"]
    paths = [
        {s["path"] for line in lines for s in (line["a"], line["b"]) if "path" in s}
        for lines in (train, test)
    ]
    assert not paths[0] & paths[1]
    kinds = {(line["a"]["modality"], line["b"]["modality"]) for line in test}
    assert kinds == {("image", "text"), ("audio", "text"), ("video", "text"), ("video", "image")}


def test_long_videos_hide_one_target_off_the_segment_grid(library: tuple[Path, SampleSummary]) -> None:
    root, _ = library
    videos = load_long_videos(root)
    targets = {v.target.group for v in videos}
    assert len(videos) == 3 and len(targets) == 3
    for v in videos:
        assert LONG_SECONDS[0] <= v.duration <= LONG_SECONDS[1]
        t = v.target
        assert t.t_end - t.t_start == SEGMENT_SECONDS and t.t_start % SEGMENT_SECONDS != 0
        assert v.shots[0].t_start == 0 and v.shots[-1].t_end == v.duration
        assert all(a.t_end == b.t_start for a, b in zip(v.shots, v.shots[1:], strict=False))
        # No target is shown anywhere but in its own shot; the distractors include its confusers.
        others = [s for w in videos for s in w.shots if s != w.target]
        assert not {s.group for s in others} & targets
        assert neighbours(t.group, [s.group for s in v.shots])
        look = Look.parse(t.group)
        assert look.colour in v.caption and look.size in v.caption
        with av.open(str(root / v.path)) as container:
            stream = container.streams.video[0]
            assert float(stream.duration * stream.time_base) == pytest.approx(v.duration, abs=0.6)


def test_a_complete_library_is_reused(library: tuple[Path, SampleSummary]) -> None:
    root, first = library
    probe = next((root / "audio" / "train").iterdir())
    before = probe.stat().st_mtime_ns
    again = generate_hard_library(root, **SMALL)  # type: ignore[arg-type]
    assert again == first and probe.stat().st_mtime_ns == before


def test_worlds_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown world 'soft'"):
        generate_world("soft", tmp_path)
    with pytest.raises(ValueError, match="long_videos"):
        generate_hard_library(tmp_path, long_videos=-1)

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import pytest

from trainer.sample_data import SampleSummary, digit_word, generate_sample_library

SMALL = {"audio_per_digit": (2, 1), "videos_per_digit": (1, 1)}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleSummary]:
    root = tmp_path_factory.mktemp("digits")
    return root, generate_sample_library(root, **SMALL)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _paths(lines: list[dict]) -> set[str]:
    return {side["path"] for line in lines for side in (line["a"], line["b"]) if "path" in side}


def _kind(line: dict) -> tuple[str, str]:
    return (line["a"]["modality"], line["b"]["modality"])


def test_manifests_are_well_formed_and_point_at_files(library: tuple[Path, SampleSummary]) -> None:
    root, summary = library
    for manifest, count in (
        (summary.train_manifest, summary.train_pairs),
        (summary.test_manifest, summary.test_pairs),
    ):
        lines = _lines(manifest)
        assert len(lines) == count > 0
        assert {line["group"] for line in lines} == {str(d) for d in range(10)}
        for line in lines:
            assert set(line) == {"a", "b", "group"}
            for side in (line["a"], line["b"]):
                assert side["modality"] in {"image", "text", "audio", "video"}
                key = "text" if side["modality"] == "text" else "path"
                assert set(side) == {key, "modality"} and side[key]
        for rel in _paths(lines):
            assert not Path(rel).is_absolute() and (root / rel).is_file()


def test_splits_share_no_file_and_train_has_every_pair_kind(library: tuple[Path, SampleSummary]) -> None:
    _, summary = library
    train, test = _lines(summary.train_manifest), _lines(summary.test_manifest)
    assert not _paths(train) & _paths(test)
    assert all(p.split("/")[1] == "train" for p in _paths(train))
    assert all(p.split("/")[1] == "test" for p in _paths(test))
    kinds = {_kind(line) for line in train}
    assert kinds == {
        ("image", "text"),
        ("audio", "text"),
        ("video", "text"),
        ("video", "image"),
        ("audio", "image"),
    }


def test_counts_match_the_files(library: tuple[Path, SampleSummary]) -> None:
    root, summary = library
    assert summary.images == len(list(root.glob("images/*/*.png"))) == 1797
    assert summary.audio == len(list(root.glob("audio/*/*.wav"))) == 30
    assert summary.videos == len(list(root.glob("videos/*/*.mp4"))) == 20


def test_audio_is_16k_mono_pcm(library: tuple[Path, SampleSummary]) -> None:
    root, _ = library
    with wave.open(str(root / "audio" / "train" / "7_000.wav"), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert 1.0 <= w.getnframes() / 16000 <= 3.0


def test_a_complete_library_is_reused_unless_forced(
    library: tuple[Path, SampleSummary], tmp_path: Path
) -> None:
    src, first = library
    root = tmp_path / "copy"
    shutil.copytree(src, root)
    probe = root / "audio" / "train" / "0_000.wav"
    before = probe.stat().st_mtime_ns
    manifest = (root / "train.jsonl").read_bytes()

    again = generate_sample_library(root, **SMALL)
    assert (again.train_pairs, again.test_pairs, again.audio) == (
        first.train_pairs,
        first.test_pairs,
        first.audio,
    )
    assert probe.stat().st_mtime_ns == before

    probe.write_bytes(b"stale")
    generate_sample_library(root, **SMALL, force=True)
    assert probe.read_bytes() != b"stale"
    assert (root / "train.jsonl").read_bytes() == manifest  # same seed, same manifest


def test_digit_word() -> None:
    assert [digit_word(d) for d in (0, 7, 9)] == ["zero", "seven", "nine"]
    with pytest.raises(ValueError):
        digit_word(10)

"""The trainer's commands as a user runs them: sample-data, train (with the held-out eval), eval."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import run_cli


def test_sample_data_train_eval(tmp_path: Path) -> None:
    data, out = tmp_path / "digits", tmp_path / "bundle"
    proc = run_cli("sample-data", str(data), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["images"] == 1797 and (data / "train.jsonl").is_file() and (data / "test.jsonl").is_file()

    proc = run_cli(
        "train", "--config", "trainer/configs/sample.json", "--data", str(data), "--out", str(out),
        "--steps", "6", "--batch-size", "8", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["steps"] == 6 and (out / "open_clip_config.json").is_file()
    assert "step 6/6" in proc.stderr  # the progress line: loss, lr, pairs/s
    pairs = result["eval"]
    assert {"text->image", "text->audio", "text->video", "image->video"} <= set(pairs)
    assert set(pairs["text->image"]) == {"R@1", "R@5", "R@10", "mAP"}

    proc = run_cli("eval", "--bundle", str(out), "--manifest", str(data / "test.jsonl"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["pairs"] == pairs  # the same bundle scores the same

    proc = run_cli("train", "--data", str(data), "--out", str(out), "--steps", "2", "--resume", "--json")
    assert proc.returncode == 0, proc.stderr  # resuming at step 6 >= 2: nothing left to train
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": ["text"], "freeze": ["text"]}))
    proc = run_cli("train", "--config", str(bad), "--data", str(data), "--out", str(tmp_path / "x"))
    assert proc.returncode == 1 and "also freezes" in proc.stderr

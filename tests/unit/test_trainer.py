"""The trainer on a small generated library: config and manifest checks, loss, mining, training,
checkpoints and resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.loss import ClipLoss

from encoders.bundle import load_bundle
from encoders.encoder import Encoder
from trainer.config import ConfigError, MiningCfg, TrainConfig, load_config
from trainer.evaluate import EvalItems, retrieval_metrics
from trainer.loss import GroupClipLoss, group_ids
from trainer.manifest import ManifestError, load_manifest
from trainer.sample_data import generate_sample_library
from trainer.train import train

QUICK = {"steps": 12, "batch_size": 16, "warmup_steps": 2, "log_every": 4, "checkpoint_every": 6, "lr": 3e-3}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    generate_sample_library(root, audio_per_digit=(3, 1), videos_per_digit=(1, 1))
    return root


# -- config and manifest ----------------------------------------------------------------------


def test_config_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"steps": 50, "lr": 0.01, "mining": {"enabled": True, "k": 3}}))
    cfg = load_config(path, {"steps": 7, "lr": None})
    assert cfg.steps == 7 and cfg.lr == 0.01 and cfg.mining == MiningCfg(enabled=True, k=3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train": ["image", "text"], "freeze": ["text"]}, "also freezes"),
        ({"train": ["image", "smell"]}, "unknown tower"),
        ({"batch_size": 1}, "batch_size"),
        ({"stepz": 3}, "unknown config key"),
    ],
)
def test_bad_configs_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bad_manifest_lines_are_reported_and_skipped(library: Path, tmp_path: Path) -> None:
    good = (library / "train.jsonl").read_text().splitlines()[:3]
    lines = [
        good[0],
        "{not json",
        json.dumps(
            {
                "a": {"path": "nope.png", "modality": "image"},
                "b": {"text": "x", "modality": "text"},
                "group": "1",
            }
        ),
        json.dumps(
            {"a": {"text": "x", "modality": "smell"}, "b": {"text": "y", "modality": "text"}, "group": "1"}
        ),
        json.dumps(
            {
                "path": "images/train/" + sorted((library / "images/train").iterdir())[0].name,
                "modality": "image",
                "caption": "a digit",
                "group": "0",
            }
        ),
        json.dumps({"a": {"text": "x", "modality": "text"}, "b": {"text": "y", "modality": "text"}}),
        good[1],
    ]
    manifest_path = library / "mixed.jsonl"
    manifest_path.write_text("\n".join(lines))
    m = load_manifest(manifest_path)
    assert len(m.pairs) == 3
    assert [e.split(":")[0] for e in m.errors] == [f"mixed.jsonl line {n}" for n in (2, 3, 4, 6)]
    assert "malformed JSON" in m.errors[0] and "nope.png does not exist" in m.errors[1]
    assert "unknown modality 'smell'" in m.errors[2] and "missing 'group'" in m.errors[3]
    with pytest.raises(ManifestError, match="error budget"):
        load_manifest(manifest_path, max_errors=2)


# -- loss and metrics --------------------------------------------------------------------------


def test_loss_is_open_clips_with_masking_hardness_and_mined_negatives() -> None:
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    b = torch.nn.functional.normalize(a + 0.3 * torch.randn(4, 8), dim=-1)
    scale = torch.tensor(10.0)
    loss = GroupClipLoss()
    distinct = group_ids(["x", "w", "y", "z"])
    # Four groups, nothing mined: exactly open_clip's ClipLoss.
    assert torch.allclose(loss(a, b, scale, distinct), ClipLoss()(a, b, scale))
    b2 = b.clone()
    b2[1] = a[0]  # rows 0 and 1 share group "x" and look alike: not a negative for each other
    masked = loss(a, b2, scale, group_ids(["x", "x", "y", "z"]))
    assert masked < loss(a, b2, scale, distinct)
    hard = a[:1].clone()  # a mined negative identical to anchor 0's positive direction
    with_mined = loss(a, b, scale, distinct, hard, torch.tensor([0]))
    assert with_mined > loss(a, b, scale, distinct)
    assert GroupClipLoss(hardness_beta=5.0)(a, b, scale, distinct) != loss(a, b, scale, distinct)


def test_retrieval_metrics_on_a_known_ranking() -> None:
    q = EvalItems(None, ["q0", "q1"], np.array(["a", "b"]), np.array([[1.0, 0.0], [0.0, 1.0]]))  # type: ignore[arg-type]
    t = EvalItems(
        None,  # type: ignore[arg-type]
        ["t0", "t1", "t2"],
        np.array(["a", "b", "a"]),
        np.array([[0.9, 0.1], [0.8, 0.6], [0.1, 0.9]]),
    )
    m = retrieval_metrics(q, t)
    # q0 ranks t0 (a), t1 (b), t2 (a): AP = (1/1 + 2/3) / 2; q1 ranks t2 (a), t1 (b), t0: AP = 1/2
    assert m["R@1"] == 0.5 and m["R@5"] == 1.0
    assert m["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2, abs=1e-4)


# -- training ----------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_the_bundle_reloads(library: Path, tmp_path: Path) -> None:
    cfg = replace(
        load_config(None, {**QUICK, "steps": 24}), mining=MiningCfg(enabled=True, k=2, refresh_every=12)
    )
    result = train(cfg, library / "train.jsonl", tmp_path / "b", log=lambda _: None)
    assert result.steps == 24 and not result.skipped
    assert np.mean(result.losses[-6:]) < np.mean(result.losses[:6])
    first = load_bundle(str(tmp_path / "b"), device="cpu")
    again = load_bundle(str(tmp_path / "b"), device="cpu")
    assert first.bundle_id == again.bundle_id != load_bundle("tiny", device="cpu").bundle_id
    probe = ["the number seven", "a handwritten two"]
    np.testing.assert_allclose(
        Encoder(first).embed_texts(probe), Encoder(again).embed_texts(probe), atol=1e-6
    )
    # The last checkpoint holds the same weights as the written bundle.
    state = torch.load(sorted((tmp_path / "b" / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    tiny = load_bundle("tiny", device="cpu")
    tiny.model.load_state_dict(state["model"])
    np.testing.assert_allclose(Encoder(tiny).embed_texts(probe), Encoder(first).embed_texts(probe), atol=1e-6)


def test_resume_continues_from_the_saved_step(library: Path, tmp_path: Path) -> None:
    cfg = load_config(None, QUICK)
    train(cfg, library / "train.jsonl", tmp_path / "b", log=lambda _: None)
    lines: list[str] = []
    longer = replace(cfg, steps=18)
    result = train(longer, library / "train.jsonl", tmp_path / "b", resume=True, log=lines.append)
    assert "resumed from step 12" in lines
    assert result.steps == 18 and len(result.losses) == 18


def test_checks_run_before_training(library: Path, tmp_path: Path) -> None:
    cfg = load_config(None, QUICK)
    train(cfg, library / "train.jsonl", tmp_path / "b", log=lambda _: None)
    other = replace(cfg, base_bundle=f"openclip:mmsearch-tiny/{tmp_path / 'missing.pt'}")
    with pytest.raises(Exception, match="does not exist"):
        train(other, library / "train.jsonl", tmp_path / "b", resume=True, log=lambda _: None)
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(cfg, library / "train.jsonl", tmp_path / "empty", resume=True, log=lambda _: None)


def test_resume_from_another_base_bundle_is_refused(library: Path, tmp_path: Path) -> None:
    cfg = load_config(None, QUICK)
    train(cfg, library / "train.jsonl", tmp_path / "b", log=lambda _: None)
    from encoders.bundle import save_bundle

    changed = load_bundle("tiny", device="cpu")
    with torch.no_grad():
        next(changed.model.parameters()).add_(0.5)
    save_bundle(changed, tmp_path / "other-base")
    other = replace(cfg, base_bundle=str(tmp_path / "other-base"))
    with pytest.raises(ConfigError, match="was trained from bundle"):
        train(other, library / "train.jsonl", tmp_path / "b", resume=True, log=lambda _: None)


def test_audio_training_needs_an_audio_tower(library: Path, tmp_path: Path, tiny_weights: Path) -> None:
    cfg = load_config(None, {**QUICK, "base_bundle": f"openclip:mmsearch-tiny/{tiny_weights}"})
    with pytest.raises(ConfigError, match="no audio tower"):
        train(cfg, library / "train.jsonl", tmp_path / "b", log=lambda _: None)
    bound = replace(
        cfg, audio_tower={"arch": "conv1d-mel", "width": 32, "layers": 2}, train=("audio",), steps=4
    )
    result = train(bound, library / "train.jsonl", tmp_path / "b", log=lambda _: None)
    assert load_bundle(str(result.out_dir), device="cpu").audio is not None


@pytest.fixture
def tiny_weights(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pt"
    torch.save(load_bundle("tiny", device="cpu").model.state_dict(), path)
    return path


def test_default_training_config_is_valid() -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "trainer" / "configs" / "sample.json")
    assert isinstance(cfg, TrainConfig) and cfg.max_minutes is not None and cfg.max_minutes <= 3

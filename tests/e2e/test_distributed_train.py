"""`torchrun --nproc-per-node 2 -m mmsearch train` on CPU (gloo): the same losses and the same
trained weights as one process with the same global batch and seed, one checkpoint writer, and
a 2-process checkpoint resumed by one process.

The towers are a small ViT and text transformer (LayerNorm only): BatchNorm (the tiny bundle's
ResNet) normalises over each process's share of the batch, so with it the runs differ by design.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import CLIP

from encoders.bundle import BundleSpec, ModelBundle, compute_bundle_id, load_bundle, save_bundle
from encoders.encoder import Encoder
from tests.e2e.conftest import REPO
from tests.media import make_image
from trainer import distributed
from trainer.config import ConfigError, load_config
from trainer.sample_data import generate_sample_library
from trainer.train import train

CONFIG = {
    "steps": 6,
    "batch_size": 16,
    "warmup_steps": 2,
    "lr": 3e-3,
    "log_every": 1,
    "checkpoint_every": 3,
    "augment": False,  # random shifts draw per picture: one process would draw them for all 16
    "hardness_beta": 0.5,
    "seed": 3,
    "train": ["image", "text"],
    # Mined negatives too: every process's share goes into the miner's bank, so all mine alike.
    "mining": {"enabled": True, "k": 2, "refresh_every": 2, "placement": "append"},
}
VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def vit_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle directory of small ViT towers with seeded random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIP(**VIT).eval()  # type: ignore[arg-type]
    bundle = ModelBundle(
        spec=BundleSpec(name="small-vit", model_name="small-vit"),
        model=model,
        preprocess=open_clip.image_transform(32, is_train=False),
        tokenizer=open_clip.get_tokenizer("ViT-B-32"),
        model_cfg=VIT,
        embed_dim=32,
        context_length=77,
        bundle_id=compute_bundle_id(model, VIT, dict(open_clip.get_model_preprocess_cfg(model))),
        device=torch.device("cpu"),
    )
    return save_bundle(bundle, tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Image-text pairs of ten digit classes (several pairs per class: the loss masks a class's
    other rows, across processes too)."""
    root = tmp_path_factory.mktemp("digits")
    generate_sample_library(root, audio_per_digit=(0, 0), videos_per_digit=(0, 0))
    small = root / "small.jsonl"
    small.write_text("".join((root / "train.jsonl").read_text().splitlines(keepends=True)[:96]))
    return small


def _torchrun(config: Path, manifest: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "mmsearch", "train", "--config", str(config), "--manifest", str(manifest),
        "--out", str(out), "--device", "cpu", "--json",
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)


def test_two_processes_train_as_one_and_resume_in_one(
    manifest: Path, vit_bundle: Path, tmp_path: Path
) -> None:
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({**CONFIG, "base_bundle": str(vit_bundle)}))
    config = load_config(config_file, {"device": "cpu"})

    single = train(config, manifest, tmp_path / "single", log=lambda _: None)
    proc = _torchrun(config_file, manifest, tmp_path / "dp")
    assert proc.returncode == 0, proc.stderr[-4000:]
    # One report (process 0's), on the last line; the other process prints nothing.
    lines = proc.stdout.strip().splitlines()
    assert len([line for line in lines if line.startswith("{")]) == 1, proc.stdout
    dp = json.loads(lines[-1])
    assert dp["steps"] == single.steps == 6
    assert sum("step 6/6" in line for line in proc.stderr.splitlines()) == 1  # one log

    states = {}
    for name in ("single", "dp"):
        found = sorted((tmp_path / name / "checkpoints").glob("step_*.pt"))
        assert [p.name for p in found] == ["step_0000003.pt", "step_0000006.pt"]
        states[name] = torch.load(found[-1], map_location="cpu", weights_only=False)
    np.testing.assert_allclose(states["dp"]["losses"], single.losses, rtol=1e-4, atol=1e-5)
    assert states["single"]["model"].keys() == states["dp"]["model"].keys()
    moved = 0.0
    base = torch.load(sorted((tmp_path / "single" / "checkpoints").glob("*.pt"))[0], weights_only=False)
    for key, want in states["single"]["model"].items():
        got = states["dp"]["model"][key]
        if key.endswith("in_proj_bias"):
            # The key projection's bias cancels in the softmax: its gradient is rounding noise,
            # which Adam scales up to full steps. Compare the query and value biases.
            third = len(want) // 3
            got, want = (
                torch.cat([got[:third], got[2 * third :]]),
                torch.cat([want[:third], want[2 * third :]]),
            )
        torch.testing.assert_close(got, want, rtol=1e-4, atol=5e-5, msg=key)
        moved = max(moved, float((states["single"]["model"][key] - base["model"][key]).abs().max()))
    assert moved > 1e-3  # the weights did train: equal because the runs agree, not because idle
    # The written bundles embed alike.
    probe = ["the number seven", "a handwritten two", "digit 4"]
    bundles = [Encoder(load_bundle(str(tmp_path / name), "cpu")) for name in ("single", "dp")]
    np.testing.assert_allclose(bundles[1].embed_texts(probe), bundles[0].embed_texts(probe), atol=1e-4)
    pictures = [make_image(k, size=(32, 32)) for k in range(3)]
    np.testing.assert_allclose(
        bundles[1].embed_images(pictures), bundles[0].embed_images(pictures), atol=1e-4
    )

    # Process 0's checkpoint resumes in a single process, under the same global batch.
    lines_seen: list[str] = []
    resumed = train(
        load_config(config_file, {"device": "cpu", "steps": 8}),
        manifest,
        tmp_path / "dp",
        resume=True,
        log=lines_seen.append,
    )
    assert "resumed from step 6" in lines_seen
    assert resumed.steps == 8 and len(resumed.losses) == 8
    np.testing.assert_allclose(resumed.losses[:6], states["dp"]["losses"])
    assert all(np.isfinite(resumed.losses))


def test_a_batch_that_does_not_split_is_refused(
    manifest: Path, vit_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Process 0 of 2 (the check runs before the process group is used).
    monkeypatch.setattr(distributed, "init", lambda device: (distributed.Dist(0, 2), device))
    config = load_config(None, {**CONFIG, "base_bundle": str(vit_bundle), "batch_size": 15})
    with pytest.raises(ConfigError, match="batch_size 15 does not split over 2 processes"):
        train(config, manifest, tmp_path / "dp", log=lambda _: None)

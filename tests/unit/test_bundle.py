from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from encoders.bundle import (
    TINY_MODEL_NAME,
    ModelBundle,
    load_bundle,
    parse_bundle_name,
    register_builtin_configs,
    save_bundle,
)
from encoders.encoder import Encoder
from encoders.errors import BundleError
from tests.media import make_image


def test_tiny_bundle_is_deterministic(tiny_bundle: ModelBundle) -> None:
    again = load_bundle("tiny", device="cpu")
    assert again.bundle_id == tiny_bundle.bundle_id
    assert tiny_bundle.embed_dim == 64 and tiny_bundle.context_length == 77


def test_tiny_bundle_id_is_stable(tiny_bundle: ModelBundle) -> None:
    # Stored indexes record this id: a change in how tiny's weights are drawn orphans them.
    assert tiny_bundle.bundle_id == "b550e60ab94bbd8ff5364026"


def test_loading_a_bundle_leaves_the_global_rng_alone(tiny_bundle: ModelBundle) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    again = load_bundle("tiny", device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(torch.rand(4), expected)
    assert again.bundle_id == tiny_bundle.bundle_id


def test_registering_builtin_configs_twice_is_harmless(tiny_bundle: ModelBundle) -> None:
    register_builtin_configs()
    models = open_clip.list_models()
    config = open_clip.get_model_config(TINY_MODEL_NAME)
    register_builtin_configs()
    assert open_clip.list_models() == models and models.count(TINY_MODEL_NAME) == 1
    assert open_clip.get_model_config(TINY_MODEL_NAME) == config
    assert load_bundle("tiny", device="cpu").bundle_id == tiny_bundle.bundle_id


def test_encoder_outputs_are_unit_float32(encoder: Encoder) -> None:
    imgs = encoder.embed_images([make_image(i) for i in range(10)])
    txts = encoder.embed_texts(["a cat", "a dog", "a boat"])
    for v in (imgs, txts):
        assert v.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert imgs.shape == (10, 64) and txts.shape == (3, 64)
    # Batching does not change results: image 9 alone equals image 9 in a batch of 10.
    np.testing.assert_allclose(encoder.embed_images([make_image(9)])[0], imgs[9], atol=1e-5)


def test_saved_bundle_directory_reloads_to_the_same_space(tiny_bundle: ModelBundle, tmp_path: Path) -> None:
    out = save_bundle(tiny_bundle, tmp_path / "bundle")
    loaded = load_bundle(str(out), device="cpu")
    assert loaded.bundle_id == tiny_bundle.bundle_id
    a = Encoder(tiny_bundle).embed_texts(["hello"])
    b = Encoder(loaded).embed_texts(["hello"])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_changed_weights_change_the_bundle_id(tiny_bundle: ModelBundle, tmp_path: Path) -> None:
    out = save_bundle(tiny_bundle, tmp_path / "b")
    changed = load_bundle(str(out), device="cpu")
    with torch.no_grad():
        next(changed.model.parameters()).add_(0.01)
    save_bundle(changed, tmp_path / "c")
    assert load_bundle(str(tmp_path / "c"), device="cpu").bundle_id != tiny_bundle.bundle_id


def test_openclip_name_with_local_weights_file(tiny_bundle: ModelBundle, tmp_path: Path) -> None:
    weights = tmp_path / "weights.pt"
    torch.save(tiny_bundle.model.state_dict(), weights)
    loaded = load_bundle(f"openclip:mmsearch-tiny/{weights}", device="cpu")
    # Same image/text weights, but a plain open_clip bundle has no audio tower: another space id.
    assert loaded.audio is None and loaded.bundle_id != tiny_bundle.bundle_id
    np.testing.assert_allclose(
        Encoder(loaded).embed_texts(["hello"]), Encoder(tiny_bundle).embed_texts(["hello"]), atol=1e-6
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no-such-bundle", "unknown bundle"),
        ("openclip:ViT-B-32", "expected openclip:MODEL/TAG"),
    ],
)
def test_bad_bundle_names_are_explained(name: str, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        parse_bundle_name(name)


def test_missing_weights_file_is_explained(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(f"openclip:mmsearch-tiny/{tmp_path}/missing.pt")


def test_bundle_dir_without_config_is_explained(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"open_clip_config\.json"):
        parse_bundle_name(str(tmp_path))

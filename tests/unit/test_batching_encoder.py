"""The query path's encoder: trimmed text towers give open_clip's own vectors, batched forward
passes give the unbatched ones, and the text cache serves a vector only in its own space."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import open_clip
import pytest
import torch

from encoders.bundle import ModelBundle
from encoders.embed import Embedder
from encoders.encoder import Encoder, encode_text_trimmed, trimmable_text_tower
from encoders.inputs import ImageInput, TextInput
from server.batched_encoder import BatchedEncoder, TextCache
from tests.media import image_bytes

TEXTS = [
    "a",
    "a red kite at dawn",
    "the quiet harbour in the rain, with ferries and gulls",
    " ".join(["mountains"] * 74),  # fills the whole context: nothing to trim
    "x y",
]


def padded(model: torch.nn.Module, tokenizer: object, texts: list[str]) -> np.ndarray:
    """open_clip's own encode_text on full-context tokens, normalised."""
    with torch.inference_mode():
        feats = model.encode_text(tokenizer(texts))  # type: ignore[operator]
    return torch.nn.functional.normalize(feats.float(), dim=-1).numpy()


def test_trimmed_tiny_text_tower_matches_open_clip(tiny_bundle: ModelBundle) -> None:
    encoder = Encoder(tiny_bundle)
    assert encoder.trims_text
    ref = padded(tiny_bundle.model, tiny_bundle.tokenizer, TEXTS)
    np.testing.assert_allclose(encoder.embed_texts(TEXTS), ref, atol=1e-5)
    for text, row in zip(TEXTS, ref, strict=True):  # alone, each is trimmed to its own length
        np.testing.assert_allclose(encoder.embed_texts([text])[0], row, atol=1e-5)


def test_trimmed_vit_b_32_text_tower_matches_open_clip() -> None:
    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    assert trimmable_text_tower(model)
    tokens = tokenizer(TEXTS[:3])
    with warnings.catch_warnings():  # TorchScript's deprecation notice (see Encoder.script_text_tower)
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model.transformer)  # as the server runs it
    ref = padded(model, tokenizer, TEXTS[:3])
    with torch.inference_mode():
        for blocks in (None, scripted):
            trimmed = encode_text_trimmed(model, tokens, blocks=blocks)
            np.testing.assert_allclose(torch.nn.functional.normalize(trimmed, dim=-1).numpy(), ref, atol=1e-5)


def test_towers_that_may_look_past_the_end_token_keep_full_padding(tiny_bundle: ModelBundle) -> None:
    model = open_clip.create_model(tiny_bundle.spec.model_name, pretrained=None, force_custom_text=True)
    assert not trimmable_text_tower(model)  # CustomTextCLIP: its own text module decides
    assert trimmable_text_tower(tiny_bundle.model)


def test_batched_encoder_gives_the_unbatched_vectors(tiny_bundle: ModelBundle) -> None:
    base = Encoder(tiny_bundle)
    batched = BatchedEncoder(base, max_batch=8, max_wait=0.0)
    assert batched.script_text_tower()  # the serving encoder runs its text blocks as TorchScript
    texts = [f"query number {i}" for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(lambda t: batched.embed_texts([t])[0], texts))
    np.testing.assert_allclose(np.stack(rows), base.embed_texts(texts), atol=1e-5)
    plain, on_batches = Embedder(base), Embedder(batched)
    inputs = [ImageInput(image_bytes(i), f"img{i}") for i in range(3)] + [TextInput("a long text " * 40, "t")]
    for a, b in zip(plain.embed(inputs), on_batches.embed(inputs), strict=True):
        np.testing.assert_allclose(a.pooled, b.pooled, atol=1e-5)  # type: ignore[union-attr]


def test_text_cache_serves_repeats_within_its_bundle_only(tiny_bundle: ModelBundle) -> None:
    cache = TextCache(max_entries=2)
    lookups: list[tuple[int, int]] = []
    encoder = BatchedEncoder(
        Encoder(tiny_bundle),
        max_batch=8,
        max_wait=0.0,
        cache=cache,
        on_cache=lambda h, m: lookups.append((h, m)),
    )
    first = encoder.embed_texts(["alpha", "beta"])
    again = encoder.embed_texts(["beta", "alpha"])
    np.testing.assert_array_equal(again, first[::-1])
    assert lookups == [(0, 2), (2, 0)]
    assert cache.get("another-bundle", "alpha") is None  # same text, another space: never served
    encoder.embed_texts(["gamma"])  # evicts the least recently used ("beta": "alpha" was read last)
    assert len(cache) == 2 and cache.get(tiny_bundle.bundle_id, "beta") is None
    cached = cache.get(tiny_bundle.bundle_id, "alpha")
    assert cached is not None and not cached.flags.writeable  # callers cannot change a shared vector
    off = TextCache(0)
    off.put("b", "t", np.ones(3, dtype=np.float32))
    assert off.get("b", "t") is None
    with pytest.raises(ValueError):
        TextCache(-1)

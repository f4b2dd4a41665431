"""The one embedding path: mixed batches, per-input failures, and the same vectors for the same
input whether the query service, the trainer's evaluation or its towers compute them."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.embed import Embedder, Failure, ImageEmbedding, TextEmbedding
from encoders.encoder import Encoder
from encoders.inputs import AudioInput, ImageInput, TextInput, input_for
from encoders.modality import Modality
from indexer.qdrant_store import QdrantStore
from indexer.schema import CollectionSchema
from server.config import ServerConfig
from server.context import background
from server.query_types import QueryInput
from server.services import make_services
from tests.media import image_bytes
from trainer.data import ItemCache
from trainer.evaluate import embed_items
from trainer.manifest import ItemRef, load_manifest
from trainer.towers import Towers

LONG = " ".join(["mountains"] * 40 + ["ramen"] * 120)


@pytest.fixture
def embedder(encoder: Encoder) -> Iterator[Embedder]:
    e = Embedder(encoder)
    yield e
    e.close()


def test_a_mixed_batch_keeps_order_and_fails_item_by_item(embedder: Embedder) -> None:
    out = embedder.embed(
        [
            TextInput("a red bicycle", "t0"),
            ImageInput(b"\x89PNG not really", "broken.png"),
            ImageInput(image_bytes(1), "ok.png"),
            TextInput("   ", "blank"),
            TextInput(LONG, "long"),
        ]
    )
    assert isinstance(out[0], TextEmbedding) and len(out[0].chunks) == 1
    assert isinstance(out[1], Failure) and "broken.png" in out[1].error
    assert isinstance(out[2], ImageEmbedding) and out[2].width == 96
    assert isinstance(out[3], Failure) and "blank: text is empty" in out[3].error
    assert isinstance(out[4], TextEmbedding) and len(out[4].chunks) > 1
    for e in (out[0], out[2], out[4]):
        assert not isinstance(e, Failure)
        assert e.pooled.dtype == np.float32 and abs(float(np.linalg.norm(e.pooled)) - 1) < 1e-5


def test_batching_does_not_change_a_vector(embedder: Embedder) -> None:
    alone = embedder.embed([ImageInput(image_bytes(4))])[0]
    together = embedder.embed([TextInput("x"), ImageInput(image_bytes(3)), ImageInput(image_bytes(4))])[2]
    assert not isinstance(alone, Failure) and not isinstance(together, Failure)
    np.testing.assert_allclose(alone.pooled, together.pooled, atol=1e-5)


def test_audio_without_a_tower_is_a_named_failure(encoder: Encoder) -> None:
    no_audio = Encoder(replace(encoder.bundle, audio=None))
    (out,) = Embedder(no_audio).embed([AudioInput(b"RIFF....", "clip.wav")])
    assert isinstance(out, Failure) and "has no audio tower" in out.error


def test_input_for_refuses_the_wrong_kind_of_data() -> None:
    with pytest.raises(TypeError, match=r"x\.png: image item carries text"):
        input_for(Modality.IMAGE, "text", "x.png")
    with pytest.raises(TypeError, match="t: text item carries bytes"):
        input_for(Modality.TEXT, b"bytes", "t")


def test_long_text_is_chunked_the_same_way_by_service_eval_and_trainer(
    encoder: Encoder, embedder: Embedder, tmp_path: Path
) -> None:
    """The drift the groundwork issue found: eval truncated long text, the service chunked it."""
    store = QdrantStore(":memory:", CollectionSchema(encoder.bundle.bundle_id, encoder.dim))
    services = make_services(embedder, store, ServerConfig())
    (served,) = services.queries.encode(background(), [QueryInput(text=LONG)], ["query"])
    image = tmp_path / "i.png"
    image.write_bytes(image_bytes(0))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(f'{{"path": "i.png", "modality": "image", "caption": "{LONG}", "group": "g"}}\n')
    evaluated = embed_items(embedder, load_manifest(manifest))[Modality.TEXT].vectors[0]
    np.testing.assert_allclose(served.vector, evaluated, atol=1e-5)

    cache = ItemCache(embedder)
    ref = ItemRef(Modality.TEXT, text=LONG)
    cache.load([ref])
    towers = Towers(encoder.bundle, random.Random(0))
    towers.training = False
    with torch.no_grad():
        trained = towers.embed([cache.get(ref)], Modality.TEXT)[0].numpy()
    np.testing.assert_allclose(served.vector, trained, atol=1e-4)
    # and the tail beyond one context really counts: the first chunk alone is another vector
    first = embedder.embed([TextInput(embedder.encoder.chunk(LONG)[0].text)])[0]
    assert not isinstance(first, Failure) and float(first.pooled @ served.vector) < 0.999


def test_decoded_media_are_held_to_a_budget(encoder: Encoder) -> None:
    inputs = [ImageInput(image_bytes(i), f"i{i}.png") for i in range(6)] + [TextInput("a caption")]
    unbounded = Embedder(encoder)
    small = Embedder(encoder, decoded_budget=1)  # every decode window is embedded and released
    groups: list[int] = []
    embed_decoded = small.embed_decoded

    def spy(decoded, **kwargs):  # type: ignore[no-untyped-def]
        groups.append(len(decoded))
        return embed_decoded(decoded, **kwargs)

    small.embed_decoded = spy  # type: ignore[method-assign]
    a, b = unbounded.embed(inputs), small.embed(inputs)
    assert len(groups) > 1 and max(groups) <= max(1, small.decoder.workers)
    for x, y in zip(a, b, strict=True):
        assert not isinstance(x, Failure) and not isinstance(y, Failure)
        np.testing.assert_allclose(x.pooled, y.pooled, atol=1e-5)

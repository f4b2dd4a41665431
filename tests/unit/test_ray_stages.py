"""The Ray ingest's stages without Ray: DecodeStage and EmbedStage, called on pickled batches as
Ray calls them, turn files into the local pipeline's very points; the driver's writer settles
items already in the store as unchanged."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from encoders.bundle import ModelBundle
from encoders.errors import BundleError
from indexer.ingest_local import IngestRequest, ingest_library
from indexer.ingest_steps import settle_stored, skip_by_stat
from indexer.ingest_work import Action, Work
from indexer.pipeline import PipelineOptions
from indexer.qdrant_store import QdrantStore
from indexer.ray_ingest import RayOptions, StoreTarget
from indexer.ray_stages import DecodeStage, EmbedStage, StageConfig, pack, release_decoding, unpack
from indexer.schema import CollectionSchema, PointRecord
from indexer.sources import ItemStatus
from indexer.walk import walk_sources
from mmsearch.ray_cli import ServerEmbedder
from server.config import ServerConfig
from server.services import build_embedder
from tests.media import make_image, tone, write_audio, write_library, write_video


class Recording(QdrantStore):
    def __init__(self, schema: CollectionSchema) -> None:
        super().__init__(":memory:", schema)
        self.written: dict[str, PointRecord] = {}

    def upsert(self, points: Sequence[PointRecord]) -> None:
        self.written.update({p.id: p for p in points})
        super().upsert(points)


def test_stages_on_pickled_batches_give_the_pipelines_points(
    tiny_bundle: ModelBundle, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    write_library(lib, n_images=4)
    write_audio(lib / "media" / "a.wav", tone(1, 3.0))
    write_video(lib / "media" / "v.mp4", [make_image(k, size=(96, 64)) for k in range(4)], fps=2)
    schema = CollectionSchema(tiny_bundle.bundle_id, tiny_bundle.embed_dim)
    options = PipelineOptions(batch_size=8)

    embedder, query_decoder = build_embedder(tiny_bundle, ServerConfig())
    query_decoder.close()
    local = Recording(schema)
    try:
        summary = ingest_library(embedder, local, IngestRequest(path=lib, progress=False), options)
    finally:
        embedder.close()

    config = StageConfig(ServerEmbedder(ServerConfig()), options, "default", tiny_bundle.bundle_id)
    config = pickle.loads(pickle.dumps(config))  # as every worker gets it
    works = [skip_by_stat(src, None, "default") for src in walk_sources(lib)]
    try:
        decoded = DecodeStage(config)(pack(works))
    finally:
        release_decoding()  # the decoder workers a Ray task process keeps for its next task
    embedded = unpack(EmbedStage(config)(decoded))

    outcomes = {w.src.source: w.result.status for w in embedded if w.result is not None}
    assert len(outcomes) == len(works)
    assert sum(s == ItemStatus.INDEXED for s in outcomes.values()) == summary.indexed
    assert sum(s == ItemStatus.QUARANTINED for s in outcomes.values()) == summary.quarantined == 2
    records = {r.id: r for w in embedded if w.action == Action.WRITE for r in w.records}
    assert records.keys() == local.written.keys()
    for pid, want in local.written.items():
        got = records[pid]
        assert got.payload == want.payload
        np.testing.assert_allclose(got.vector, want.vector, atol=1e-5)
        if want.frames is not None:
            assert got.frames is not None
            np.testing.assert_allclose(got.frames, want.frames, atol=1e-5)
    # Each item's sentinel comes last among its records, as a sink requires.
    for w in embedded:
        if w.action == Action.WRITE:
            assert w.records[-1].id == w.sentinel

    # The driver's check: an item already in the store (not journaled) is unchanged, not rewritten.
    target = StoreTarget(local)
    found = target.stored([w.sentinel for w in embedded if w.action == Action.WRITE])
    assert found is not None
    again: list[Work] = []
    for w in unpack(pack(embedded)):
        if w.action == Action.WRITE:
            settle_stored(w, found.get(w.sentinel))
            again.append(w)
    assert again and all(w.result is not None and w.result.status == ItemStatus.UNCHANGED for w in again)
    assert all(w.action == Action.CONFIRM and not w.records for w in again)
    local.close()


def test_an_actor_with_another_copy_of_the_bundle_refuses_to_start() -> None:
    config = StageConfig(ServerEmbedder(ServerConfig()), PipelineOptions(), "default", "b-the-drivers")
    with pytest.raises(BundleError, match="b-the-drivers on the driver"):
        EmbedStage(config)


def test_ray_options_are_checked() -> None:
    with pytest.raises(ValueError, match="actors"):
        RayOptions(actors=0)
    with pytest.raises(ValueError, match="decode_cpus"):
        RayOptions(decode_cpus=0)

"""WritePoints on a real server with API keys: points computed in another process (as a Ray
ingest's encoder actors compute them) land as the caller's tenant with the ids and payloads the
local pipeline gives; another bundle, a malformed point or a missing scope is refused."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest

from encoders.decode import MediaDecoder
from encoders.embed import Embedder
from encoders.encoder import Encoder
from encoders.modality import Modality
from indexer.point_check import PointError
from indexer.qdrant_store import QdrantStore
from indexer.schema import CollectionSchema, PointRecord
from indexer.sources import SourceFile
from indexer.store import BundleMismatchError
from indexer.tenancy import tenant_store
from mmsearch.point_sink import GrpcPointSink, point_message
from tests.e2e.tenant_server import Keyed, start_keyed
from tests.media import image_bytes, make_image, write_video

KEYS = {
    "writer": ("acme", "read,write"),
    "reader": ("acme", "read"),
    "other": ("globex", "read,write"),
    "admin": ("default", "admin"),
}


class Recording(QdrantStore):
    def __init__(self, schema: CollectionSchema) -> None:
        super().__init__(":memory:", schema)
        self.written: list[PointRecord] = []

    def upsert(self, points: Sequence[PointRecord]) -> None:
        self.written += [copy.deepcopy(p) for p in points]
        super().upsert(points)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    k = start_keyed(tmp_path_factory.mktemp("write-points"), KEYS)
    yield k
    k.stop()


@pytest.fixture(scope="module")
def acme_points(encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> list[PointRecord]:
    """What the local pipeline writes for a small library in acme's namespace."""
    from indexer.pipeline import IngestPipeline, PipelineOptions

    root = tmp_path_factory.mktemp("lib")
    for i in range(3):
        (root / f"img{i}.png").write_bytes(image_bytes(i))
    write_video(root / "v.mp4", [make_image(k, size=(160, 120)) for k in range(4)], fps=2)
    text = " ".join(f"line {i} of a long note about harbours and ships." for i in range(40))
    sources = [SourceFile.from_path(p) for p in sorted(root.iterdir())]
    sources.append(SourceFile("notes#1", Modality.TEXT, len(text), 0.0, text=text, external_id="note-1"))
    store = Recording(CollectionSchema(encoder.bundle.bundle_id, encoder.dim))
    embedder = Embedder(encoder, MediaDecoder(workers=1, sample_rate=encoder.decode_sample_rate))
    try:
        with IngestPipeline(embedder, tenant_store(store, "acme"), PipelineOptions(), namespace="acme") as p:
            assert p.run(sources).indexed == len(sources)
    finally:
        embedder.close()
        store.close()
    return store.written


def test_points_written_remotely_are_the_pipelines_own(
    keyed: Keyed, acme_points: list[PointRecord], encoder: Encoder
) -> None:
    writer = keyed.client("writer")
    sink = GrpcPointSink(writer, encoder.bundle.bundle_id, max_points=7)  # several requests
    assert (sink.namespace, sink.dim) == ("acme", encoder.dim)
    result = sink.write(acme_points)
    assert result.written == len(acme_points) and result.removed == 0
    reader = keyed.client("reader")
    assert reader.stats().points == len(acme_points)
    got = {p.point.id: p for p in reader.get([p.id for p in acme_points], with_vectors=True).points}
    assert got.keys() == {p.id for p in acme_points}
    for p in acme_points:
        stored = got[p.id]
        np.testing.assert_allclose(stored.vector, p.vector, atol=1e-6)
        assert (stored.point.source, stored.point.media_id, stored.point.text) == (
            p.payload["source"],
            p.payload["media_id"],
            p.payload.get("text", ""),
        )
    # Written as acme's: another tenant sees none of it.
    assert keyed.client("other").stats().points == 0
    # And they answer searches like any indexed item.
    assert reader.search(text="a long note about harbours and ships", top_k=3).hits


def test_another_bundle_is_a_failed_precondition(keyed: Keyed, acme_points: list[PointRecord]) -> None:
    writer = keyed.client("writer")
    with pytest.raises(grpc.RpcError) as err:
        writer.write_points("b-another-space", [point_message(p) for p in acme_points[:2]])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "b-another-space" in (err.value.details() or "")
    with pytest.raises(BundleMismatchError):
        GrpcPointSink(writer, "b-another-space")


def test_a_malformed_point_is_refused_with_its_index(
    keyed: Keyed, acme_points: list[PointRecord], encoder: Encoder
) -> None:
    writer = keyed.client("writer")
    bad = [point_message(p) for p in acme_points[:3]]
    del bad[2].vector[5:]
    with pytest.raises(grpc.RpcError) as err:
        writer.write_points(encoder.bundle.bundle_id, bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "points[2]" in (err.value.details() or "") and "expected (64,)" in (err.value.details() or "")
    # Another tenant's points: the sink refuses them before sending, and so does the server.
    other = keyed.client("other")
    with pytest.raises(PointError, match=r"payload tenant 'acme' is not the writer's \('globex'"):
        GrpcPointSink(other, encoder.bundle.bundle_id).write(acme_points)
    untagged = [copy.deepcopy(p) for p in acme_points]
    for p in untagged:
        del p.payload["tenant"]
    with pytest.raises(grpc.RpcError) as err:
        other.write_points(encoder.bundle.bundle_id, [point_message(p) for p in untagged])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "namespace 'globex'" in (err.value.details() or "")
    assert other.stats().points == 0


def test_scopes(keyed: Keyed, acme_points: list[PointRecord], encoder: Encoder, tmp_path: Path) -> None:
    with pytest.raises(grpc.RpcError) as err:
        keyed.client("reader").write_points(encoder.bundle.bundle_id, [])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Reindex is an admin call: a write key may not start one.
    with pytest.raises(grpc.RpcError) as err:
        list(keyed.client("writer").reindex("tiny"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # An admin may; the bundle in use is refused with a reason.
    with pytest.raises(grpc.RpcError) as err:
        list(keyed.client("admin").reindex("tiny"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already uses bundle" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        list(keyed.client("admin").reindex(str(tmp_path / "no-such-bundle")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

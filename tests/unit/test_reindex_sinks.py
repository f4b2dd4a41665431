"""Point sinks (indexer.sinks): points computed elsewhere are checked and written exactly as the
ingest pipeline writes them; the WritePoints service maps the sink's refusals to statuses."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from encoders.decode import MediaDecoder
from encoders.embed import Embedder
from encoders.encoder import Encoder
from encoders.modality import Modality
from indexer import media_points
from indexer.pipeline import IngestPipeline, PipelineOptions
from indexer.point_check import _FIELDS, PAYLOAD_KEYS, POOLED, PointError
from indexer.qdrant_store import QdrantStore
from indexer.schema import CollectionSchema, Key, PointRecord
from indexer.sinks import StoreSink
from indexer.sources import SourceFile
from indexer.store import BundleMismatchError, VectorStore
from indexer.tenancy import tenant_store
from mmsearch.point_sink import point_message
from mmsearch.v1 import search_pb2 as pb
from server.config import ServerConfig
from server.context import RequestContext
from server.errors import FailedPrecondition, InvalidArgument
from server.services import make_services
from server.write_points import write_points
from tests.media import image_bytes, make_image, tone, write_audio, write_video

LONG = " ".join(f"sentence {i} of a text long enough for several chunks." for i in range(80))


class Recording(QdrantStore):
    """An in-process store that keeps every PointRecord written to it, in order."""

    def __init__(self, schema: CollectionSchema) -> None:
        super().__init__(":memory:", schema)
        self.written: list[PointRecord] = []

    def upsert(self, points: Sequence[PointRecord]) -> None:
        self.written += [copy.deepcopy(p) for p in points]
        super().upsert(points)


@pytest.fixture(scope="module")
def made(encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[PointRecord]]:
    """The points the pipeline writes for a small library, in the default namespace and in acme's."""
    root = tmp_path_factory.mktemp("sinks")
    (root / "a.png").write_bytes(image_bytes(1))
    write_audio(root / "clip.wav", tone(2, 2.0))
    write_video(root / "v.mp4", [make_image(k, size=(160, 120)) for k in range(4)], fps=2, audio=tone(3, 2.0))
    sources = [SourceFile.from_path(root / n) for n in ("a.png", "clip.wav", "v.mp4")]
    sources.append(SourceFile("inline#1", Modality.TEXT, len(LONG), 0.0, text=LONG, external_id="doc-1"))
    out = {}
    embedder = Embedder(encoder, MediaDecoder(workers=1, sample_rate=encoder.decode_sample_rate))
    try:
        for ns in ("default", "acme"):
            store = Recording(_schema(encoder))
            with IngestPipeline(
                embedder, tenant_store(store, ns), PipelineOptions(batch_size=8), namespace=ns
            ) as p:
                summary = p.run(sources)
            assert summary.indexed == len(sources), summary.errors
            out[ns] = store.written
            store.close()
    finally:
        embedder.close()
    return out


def _schema(encoder: Encoder) -> CollectionSchema:
    return CollectionSchema(encoder.bundle.bundle_id, encoder.dim)


@pytest.fixture
def store(encoder: Encoder) -> Iterator[VectorStore]:
    s = QdrantStore(":memory:", _schema(encoder))
    yield s
    s.close()


def _all(store: VectorStore) -> dict[str, tuple[dict[str, object], np.ndarray | None]]:
    out: dict[str, tuple[dict[str, object], np.ndarray | None]] = {}
    offset = None
    while True:
        page, offset = store.scroll(limit=256, offset=offset)
        got = store.get([p.id for p in page], with_vectors=True)
        out |= {p.id: (p.payload, p.vector) for p in got}
        if offset is None:
            return out


def test_the_checker_knows_every_payload_field() -> None:
    assert set(_FIELDS) == PAYLOAD_KEYS
    assert POOLED == media_points.POOLED


def test_a_sink_writes_what_the_pipeline_wrote(made: dict[str, list[PointRecord]], encoder: Encoder) -> None:
    for ns, points in made.items():
        direct = Recording(_schema(encoder))
        tenant_store(direct, ns).upsert(points)
        via = QdrantStore(":memory:", _schema(encoder))
        result = StoreSink(via, namespace=ns).write(points)
        assert result.written == len(points) and result.removed == 0
        a, b = _all(direct), _all(via)
        assert a.keys() == b.keys() and len(a) == len(points)
        for pid, (payload, vector) in a.items():
            assert b[pid][0] == payload
            np.testing.assert_allclose(np.asarray(b[pid][1]), np.asarray(vector), atol=1e-6)
        assert any(p.frames is not None for p in points)  # the video's frames went through too
        direct.close()
        via.close()


def test_ids_must_derive_in_the_writers_namespace(
    made: dict[str, list[PointRecord]], store: VectorStore
) -> None:
    with pytest.raises(PointError, match=r"points\[0\].*namespace 'acme'"):
        StoreSink(store, namespace="acme").write(made["default"])
    with pytest.raises(PointError, match=r"payload tenant 'acme' is not the writer's \(the default tenant"):
        StoreSink(store).write(made["acme"])
    untagged = [copy.deepcopy(p) for p in made["acme"]]
    for p in untagged:
        del p.payload[Key.TENANT]
    with pytest.raises(PointError, match="namespace 'default'"):
        StoreSink(store).write(untagged)
    assert store.count() == 0


def _spoil(points: list[PointRecord], index: int, **changes: object) -> list[PointRecord]:
    out = [copy.deepcopy(p) for p in points]
    p = out[index]
    for key, value in changes.items():
        if key in ("vector", "frames", "id"):
            setattr(p, key, value)
        elif value is None:
            p.payload.pop(key, None)
        else:
            p.payload[key] = value
    return out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vector": np.zeros(7, np.float32)}, r"vector has shape \(7,\), expected \(64,\)"),
        ({"vector": np.full(64, math.nan, np.float32)}, "non-finite"),
        ({"vector": np.zeros(64, np.float32)}, "all zeros"),
        ({"id": "not-a-uuid"}, "not a UUID"),
        ({"colour": "red"}, "payload key 'colour' is not one of"),
        ({"segment": "one"}, "payload segment = 'one' is not an integer >= 0"),
        ({"modality": None}, "payload has no modality"),
        ({"bundle_id": "b-other"}, "is not the written bundle"),
        ({"tenant": "someone"}, "payload tenant 'someone' is not the writer's"),
        ({"content_hash": "f" * 64}, "does not derive"),
        ({"frames": np.ones((2, 64), np.float32)}, "only a video segment's visual point has frame vectors"),
    ],
)
def test_a_malformed_point_refuses_the_whole_write(
    made: dict[str, list[PointRecord]], store: VectorStore, change: dict[str, object], message: str
) -> None:
    points = _spoil(made["default"], 0, **change)
    with pytest.raises(PointError, match=message):
        StoreSink(store).write(points)
    assert store.count() == 0


def test_video_segments_need_their_frames_and_sentinels_come_last(
    made: dict[str, list[PointRecord]], store: VectorStore
) -> None:
    points = made["default"]
    framed = next(i for i, p in enumerate(points) if p.frames is not None)
    with pytest.raises(PointError, match="needs its frame vectors"):
        StoreSink(store).write(_spoil(points, framed, frames=None))
    sentinel = next(p for p in points if Key.POINT_IDS in p.payload and len(p.payload[Key.POINT_IDS]) > 1)
    with pytest.raises(PointError, match="write an item's sentinel after its other points"):
        StoreSink(store).write([sentinel])
    assert store.count() == 0


def test_another_bundle_is_refused(made: dict[str, list[PointRecord]], store: VectorStore) -> None:
    with pytest.raises(BundleMismatchError):
        StoreSink(store).write(made["default"], bundle_id="b-another-space")


def test_a_shorter_rewrite_of_an_item_removes_its_old_points(
    made: dict[str, list[PointRecord]], store: VectorStore, encoder: Encoder
) -> None:
    sink = StoreSink(store)
    long_doc = [p for p in made["default"] if p.payload.get(Key.EXTERNAL_ID) == "doc-1"]
    assert len(long_doc) > 2
    sink.write(long_doc)
    short = Recording(_schema(encoder))
    embedder = Embedder(encoder)
    with IngestPipeline(embedder, short) as p:
        p.run([SourceFile("inline#1", Modality.TEXT, 5, 0.0, text="short", external_id="doc-1")])
    result = sink.write(short.written)
    assert (result.written, result.removed) == (1, len(long_doc) - 1)
    assert store.count() == 1
    short.close()


def test_the_write_points_service_answers_statuses(
    made: dict[str, list[PointRecord]], store: VectorStore, encoder: Encoder
) -> None:
    services = make_services(Embedder(encoder), store, ServerConfig())
    ctx = RequestContext.with_timeout(10, request_id="r", method="WritePoints", tenant="acme")
    messages = [point_message(p) for p in made["acme"]]
    bundle = encoder.bundle.bundle_id
    probe = write_points(services, ctx, pb.WritePointsRequest(bundle_id=bundle))
    assert (probe.written, probe.namespace, probe.dim) == (0, "acme", encoder.dim)
    with pytest.raises(FailedPrecondition, match="bundle b-other was requested"):
        write_points(services, ctx, pb.WritePointsRequest(bundle_id="b-other", points=messages))
    bad = pb.PointData()
    bad.CopyFrom(messages[0])
    bad.payload_json = '{"modality": NaN}'
    with pytest.raises(InvalidArgument, match=r"points\[1\].payload_json is not JSON"):
        write_points(services, ctx, pb.WritePointsRequest(bundle_id=bundle, points=[messages[0], bad]))
    done = write_points(services, ctx, pb.WritePointsRequest(bundle_id=bundle, points=messages))
    assert done.written == len(messages) and store.count() == len(messages)
    # Written as acme's: stamped with the tenant, invisible to the default tenant.
    assert tenant_store(store, "default").count() == 0
    assert tenant_store(store, "acme").count() == len(messages)
    assert services.writes.optimize_if_dirty()  # the background index build is due

"""One suite, run on both store adapters (embedded Edge and qdrant-client)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from indexer.edge_store import EdgeStore
from indexer.filters import FilterSpec, Match, MatchAny, Range
from indexer.schema import CollectionSchema, PointRecord, point_id
from indexer.store import BundleMismatchError, StoreLockedError, VectorStore

SCHEMA = CollectionSchema(bundle_id="b-test", dim=16)
MakeStore = Callable[..., VectorStore]


def _points(n: int = 30, seed: int = 0) -> list[PointRecord]:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [
        PointRecord(
            id=point_id(f"p{i}"),
            vector=vecs[i],
            payload={
                "modality": "image" if i % 2 else "text",
                "source": f"/lib/{i}",
                "media_id": f"m{i // 3}",
                "meta": {"color": ["red", "green", "blue"][i % 3], "year": 2000 + i, "public": i % 4 == 0},
            },
        )
        for i in range(n)
    ]


def test_upsert_then_query_finds_the_exact_vector_first(store_factory: MakeStore) -> None:
    store = store_factory(SCHEMA)
    pts = _points()
    store.upsert(pts)
    for p in pts[:5]:
        hits = store.query(p.vector, limit=3)
        assert hits[0].id == p.id
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].payload["source"] == p.payload["source"]
        assert hits[0].score >= hits[1].score >= hits[2].score


def test_filters_restrict_results(store_factory: MakeStore) -> None:
    store = store_factory(SCHEMA)
    pts = _points()
    store.upsert(pts)
    q = pts[0].vector
    cases = {
        FilterSpec(must=(Match("modality", "image"),)): lambda p: p.payload["modality"] == "image",
        FilterSpec(must=(Match("meta.color", "red"),)): lambda p: p.payload["meta"]["color"] == "red",
        FilterSpec(must=(Range("meta.year", gte=2010, lt=2020),)): lambda p: (
            2010 <= p.payload["meta"]["year"] < 2020
        ),
        FilterSpec(must=(MatchAny("media_id", ("m1", "m2")),)): lambda p: (
            p.payload["media_id"] in ("m1", "m2")
        ),
        FilterSpec(must_not=(Match("meta.public", True),)): lambda p: not p.payload["meta"]["public"],
        FilterSpec(should=(Match("meta.color", "red"), Match("meta.color", "blue"))): lambda p: (
            p.payload["meta"]["color"] in ("red", "blue")
        ),
    }
    for spec, pred in cases.items():
        expected = {p.id for p in pts if pred(p)}
        hits = store.query(q, limit=100, filter=spec)
        assert {h.id for h in hits} == expected, spec
        assert store.count(spec) == len(expected)


def test_exclude_ids_and_score_threshold(store_factory: MakeStore) -> None:
    store = store_factory(SCHEMA)
    pts = _points()
    store.upsert(pts)
    hits = store.query(pts[0].vector, limit=5, exclude_ids=[pts[0].id])
    assert pts[0].id not in {h.id for h in hits} and len(hits) == 5
    high = store.query(pts[0].vector, limit=30, score_threshold=0.5)
    assert high and all(h.score >= 0.5 for h in high)


def test_get_count_delete_scroll(store_factory: MakeStore) -> None:
    store = store_factory(SCHEMA)
    pts = _points()
    store.upsert(pts)
    assert store.count() == 30
    got = store.get([pts[3].id, str(uuid.uuid4())], with_vectors=True)
    assert [g.id for g in got] == [pts[3].id]
    assert got[0].vector is not None
    np.testing.assert_allclose(got[0].vector, pts[3].vector, atol=1e-5)
    store.delete([pts[3].id, pts[4].id])
    assert store.count() == 28
    assert store.get([pts[3].id]) == []
    seen: list[str] = []
    offset = None
    while True:
        page, offset = store.scroll(limit=7, offset=offset)
        assert len(page) <= 7
        seen.extend(p.id for p in page)
        if offset is None:
            break
    assert len(seen) == 28 and len(set(seen)) == 28
    red = store.scroll(limit=100, filter=FilterSpec(must=(Match("meta.color", "red"),)))[0]
    assert {p.id for p in red} == {p.id for p in pts if p.payload["meta"]["color"] == "red"} - {pts[3].id}


def test_upsert_same_id_replaces(store_factory: MakeStore) -> None:
    store = store_factory(SCHEMA)
    pts = _points(5)
    store.upsert(pts)
    store.upsert([PointRecord(pts[0].id, pts[1].vector, {"modality": "text", "source": "new"})])
    assert store.count() == 5
    assert store.get([pts[0].id])[0].payload["source"] == "new"


def test_info_reports_points_and_modalities(store_factory: MakeStore) -> None:
    store = store_factory(SCHEMA)
    store.upsert(_points(10))
    info = store.info()
    assert info.points == 10
    assert info.by_modality["image"] == 5 and info.by_modality["text"] == 5 and info.by_modality["audio"] == 0
    assert info.schema.bundle_id == "b-test"


def test_wrong_vector_dimension_is_refused(store_factory: MakeStore) -> None:
    store = store_factory(SCHEMA)
    with pytest.raises(Exception, match="expected"):
        store.upsert([PointRecord(point_id("x"), np.ones(8, dtype=np.float32), {})])
    assert store.count() == 0


def test_edge_survives_restart(tmp_path: Path) -> None:
    pts = _points()
    store = EdgeStore(tmp_path / "s", SCHEMA)
    store.upsert(pts)
    store.optimize()
    store.close()
    reopened = EdgeStore(tmp_path / "s", SCHEMA)
    try:
        assert reopened.count() == 30
        assert reopened.query(pts[7].vector, limit=1)[0].id == pts[7].id
    finally:
        reopened.close()


def test_edge_refuses_another_bundle(tmp_path: Path) -> None:
    EdgeStore(tmp_path / "s", SCHEMA).close()
    with pytest.raises(BundleMismatchError, match="b-test") as exc:
        EdgeStore(tmp_path / "s", CollectionSchema(bundle_id="b-other", dim=16))
    assert "re-ingest" in str(exc.value)
    # The refusal released the lock: the right bundle still opens.
    EdgeStore(tmp_path / "s", SCHEMA).close()


def test_qdrant_refuses_another_bundle() -> None:
    from qdrant_client import QdrantClient

    from indexer.qdrant_store import QdrantStore

    client = QdrantClient(location=":memory:")
    QdrantStore(":memory:", SCHEMA, client=client).upsert(_points(3))
    with pytest.raises(BundleMismatchError, match="b-test"):
        QdrantStore(":memory:", CollectionSchema(bundle_id="b-other", dim=16), client=client)
    assert QdrantStore(":memory:", SCHEMA, client=client).count() == 3


def test_edge_second_process_gets_a_clear_error_and_no_corruption(tmp_path: Path) -> None:
    pts = _points()
    store = EdgeStore(tmp_path / "s", SCHEMA)
    store.upsert(pts)
    code = (
        "import sys\n"
        "from indexer.edge_store import EdgeStore\n"
        "from indexer.schema import CollectionSchema\n"
        "from indexer.store import StoreLockedError\n"
        "try:\n"
        f"    EdgeStore({str(tmp_path / 's')!r}, CollectionSchema(bundle_id='b-test', dim=16))\n"
        "except StoreLockedError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "already open in another process" in proc.stdout
    # The owner is unaffected.
    store.upsert(
        [PointRecord(point_id(f"new{i}"), p.vector, p.payload) for i, p in enumerate(_points(3, seed=1))]
    )
    assert store.count() == 33
    store.close()
    reopened = EdgeStore(tmp_path / "s", SCHEMA)
    assert reopened.count() == 33
    reopened.close()


def test_edge_same_process_second_open_is_refused(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "s", SCHEMA)
    with pytest.raises(StoreLockedError):
        EdgeStore(tmp_path / "s", SCHEMA)
    store.close()


def test_frames_rescoring_finds_the_segment_holding_the_frame(store_factory: MakeStore) -> None:
    store = store_factory(SCHEMA)
    rng = np.random.default_rng(3)
    frames = rng.normal(size=(4, 5, 16)).astype(np.float32)
    frames /= np.linalg.norm(frames, axis=-1, keepdims=True)
    records = []
    for k in range(4):
        pooled = frames[k].mean(axis=0)
        records.append(
            PointRecord(
                point_id("video", k), pooled / np.linalg.norm(pooled), {"modality": "video"}, frames=frames[k]
            )
        )
    records += _points(10)  # points without frames drop out of frame re-scoring
    store.upsert(records)
    query = frames[2, 3]  # one frame of segment 2
    hits = store.query(query, limit=3, frames_prefetch=50)
    assert hits[0].id == point_id("video", 2)
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert {h.id for h in hits} <= {r.id for r in records[:4]}


def test_malformed_frames_are_refused(store_factory: MakeStore) -> None:
    store = store_factory(SCHEMA)
    bad = PointRecord(
        point_id("v"), np.ones(16, dtype=np.float32), {}, frames=np.ones((2, 8), dtype=np.float32)
    )
    with pytest.raises(Exception, match="frames shape"):
        store.upsert([bad])


def test_edge_writes_survive_a_killed_process(tmp_path: Path) -> None:
    # Durability comes from the shard's write-ahead log, not from a flush per write.
    code = (
        "import os, numpy as np\n"
        "from indexer.edge_store import EdgeStore\n"
        "from indexer.schema import CollectionSchema, PointRecord, point_id\n"
        f"s = EdgeStore({str(tmp_path / 's')!r}, CollectionSchema(bundle_id='b-test', dim=16))\n"
        "v = np.ones(16, dtype=np.float32) / 4\n"
        "s.upsert([PointRecord(point_id(f'k{i}'), v, {'modality': 'text'}) for i in range(25)])\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    reopened = EdgeStore(tmp_path / "s", SCHEMA)
    try:
        assert reopened.count() == 25
    finally:
        reopened.close()


def test_multi_stage_queries_agree_with_the_plain_query(store_factory: MakeStore) -> None:
    from indexer.store import Stages

    store = store_factory(SCHEMA)
    pts = _points(60)
    store.upsert(pts)
    store.optimize()
    q = pts[5].vector
    plain = [h.id for h in store.query(q, limit=10, exact=True)]
    for stages in (
        Stages(oversampling=4),
        Stages(oversampling=4, quantized=True, exact_rescore=True),
        Stages(oversampling=3, mmr_lambda=1.0),
    ):
        staged = store.query(q, limit=10, stages=stages)
        assert [h.id for h in staged] == plain, stages
    # MMR with diversity keeps the best hit but reorders the rest away from near-duplicates.
    diverse = store.query(q, limit=10, stages=Stages(oversampling=3, mmr_lambda=0.3))
    assert diverse[0].id == plain[0] and [h.id for h in diverse] != plain


def test_recommend_and_fusion(store_factory: MakeStore) -> None:
    store = store_factory(SCHEMA)
    pts = _points(40)
    store.upsert(pts)
    a, b = pts[1].vector, pts[2].vector
    rec = store.recommend([a], [b], limit=5)
    assert rec[0].id == pts[1].id and pts[2].id not in {h.id for h in rec}
    fused = store.fuse([a, b], weights=[1.0, 1.0], limit=6, per_query=10)
    assert {pts[1].id, pts[2].id} <= {h.id for h in fused}
    assert all(x.score >= y.score for x, y in itertools.pairwise(fused))
    # Weighting one list moves its best item up relative to the other's.
    heavy_a = [h.id for h in store.fuse([a, b], weights=[3.0, 0.01], limit=20, per_query=10)]
    heavy_b = [h.id for h in store.fuse([a, b], weights=[0.01, 3.0], limit=20, per_query=10)]
    assert heavy_b.index(pts[2].id) < heavy_b.index(pts[1].id)
    assert heavy_a.index(pts[1].id) < heavy_a.index(pts[2].id)


def test_query_batch_answers_each_plan_in_order(store_factory: MakeStore) -> None:
    from indexer.query_plan import DenseQuery, FusionQuery, QueryPlan, RecommendQuery
    from indexer.store import Stages

    store = store_factory(SCHEMA)
    pts = _points(40)
    store.upsert(pts)
    a, b = pts[1].vector, pts[2].vector
    plans: list[QueryPlan] = [
        DenseQuery(a, 5),
        DenseQuery(b, 3, filter=FilterSpec(must=(Match("modality", "text"),)), stages=Stages(oversampling=2)),
        RecommendQuery((a,), (b,), 4),
        FusionQuery((a, b), (1.0, 0.5), 20, per_query=10),
    ]
    batch = store.query_batch(plans)
    assert [len(r) for r in batch[:3]] == [5, 3, 4] and 10 <= len(batch[3]) <= 20
    assert batch[0][0].id == pts[1].id and batch[1][0].id == pts[2].id
    assert batch[0] == store.query(a, limit=5)
    assert batch[2] == store.recommend([a], [b], limit=4)
    # RRF scores tie often, and the embedded engine orders tied points differently from call to
    # call: compare (score, id) pairs, with a limit that keeps every candidate (no cut-off tie).
    fused = store.fuse([a, b], weights=[1.0, 0.5], limit=20, per_query=10)
    assert sorted((-h.score, h.id) for h in batch[3]) == sorted((-h.score, h.id) for h in fused)
    assert store.query_batch([]) == []

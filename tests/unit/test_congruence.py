"""Congruence, in the style of qdrant-client's tests/congruence_tests: the same points and the same
queries on the embedded EdgeStore and on QdrantStore(":memory:") give the same ids in the same
order (ties aside) and the same scores, for every stage, every query kind and every filter kind.

Why results are deterministic on both: qdrant-client's in-process mode always scans exactly, and
the Edge shard here holds a few hundred points, far under its full-scan and indexing thresholds,
so it builds no HNSW graph and no int8 codes and scans exactly too (asserted below). Quantized
stages are still checked with a recall bar rather than for identity, as a bigger shard would
legitimately score its first pass on the int8 codes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from indexer.edge_store import EdgeStore
from indexer.filters import FilterSpec, Match, MatchAny, Range
from indexer.qdrant_store import QdrantStore
from indexer.query_plan import DenseQuery, FusionQuery, QueryPlan, RecommendQuery, Stages, Strategy
from indexer.schema import CollectionSchema, PointRecord, StoredPoint, point_id
from indexer.store import VectorStore

SCHEMA = CollectionSchema(bundle_id="b-congruence", dim=24)
N_POINTS = 320
SCORE_ATOL = 1e-4  # float32 dot products summed in different orders
RRF_ATOL = 1e-7  # RRF scores are sums of weight / (k + rank): exact ties are real ties
COLORS = ("red", "green", "blue", "amber", "teal")
MODALITIES = ("text", "image", "audio", "video")

Run = Callable[[VectorStore], list[StoredPoint]]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _points(seed: int = 7) -> list[PointRecord]:
    rng = np.random.default_rng(seed)
    # Clustered vectors, like embeddings: near neighbours and near-duplicates exist, so MMR and
    # the re-scoring stages have something to reorder.
    centres = _unit(rng.normal(size=(12, SCHEMA.dim)))
    vecs = _unit(centres[rng.integers(0, 12, N_POINTS)] + 0.35 * rng.normal(size=(N_POINTS, SCHEMA.dim)))
    points = []
    for i in range(N_POINTS):
        modality = MODALITIES[i % 4]
        frames = None
        payload: dict[str, object] = {
            "modality": modality,
            "source": f"/lib/{i}",
            "media_id": f"m{i // 5}",
            "meta": {
                "color": COLORS[i % 5],
                "year": 1990 + i % 37,
                "public": i % 3 == 0,
                "rating": round(float(rng.uniform(0, 5)), 3),
                "camera": {"make": ("acme", "zeta")[i % 2], "iso": 100 * (1 + i % 8)},
            },
        }
        if modality == "video":
            payload["track"] = "visual" if i % 8 == 3 else "audio"
            if payload["track"] == "visual":
                frames = _unit(vecs[i] + 0.5 * rng.normal(size=(2 + i % 5, SCHEMA.dim)))
        points.append(PointRecord(point_id(f"c{i}"), vecs[i], payload, frames=frames))
    return points


POINTS = _points()
QUERIES = {
    "random": _unit(np.random.default_rng(99).normal(size=SCHEMA.dim)),
    "stored": POINTS[10].vector,  # an exact match scores 1.0 on both
    "frame": _unit(POINTS[11].vector + 0.1),  # close to a video segment's frames
}

FILTERS: dict[str, FilterSpec | None] = {
    "none": None,
    "keyword": FilterSpec(must=(Match("meta.color", "red"),)),
    "int": FilterSpec(must=(Match("meta.year", 2001),)),
    "bool-true": FilterSpec(must=(Match("meta.public", True),)),
    "bool-false": FilterSpec(must=(Match("meta.public", False),)),
    "system-field": FilterSpec(must=(Match("modality", "image"),)),
    "any": FilterSpec(must=(MatchAny("meta.color", ("red", "teal")),)),
    "range-gt": FilterSpec(must=(Range("meta.rating", gt=2.5),)),
    "range-gte-lt": FilterSpec(must=(Range("meta.year", gte=2000, lt=2010),)),
    "range-lte": FilterSpec(must=(Range("meta.rating", lte=1.25),)),
    "nested": FilterSpec(must=(Match("meta.camera.make", "zeta"), Range("meta.camera.iso", gte=400))),
    "must-not": FilterSpec(must_not=(Match("meta.color", "blue"), Match("meta.public", True))),
    "should": FilterSpec(should=(Match("meta.color", "green"), Range("meta.year", lt=1995))),
    "all-groups": FilterSpec(
        must=(MatchAny("modality", ("text", "video")),),
        must_not=(Range("meta.rating", gt=4.0),),
        should=(Match("meta.camera.make", "acme"), Match("meta.public", True)),
    ),
    "matches-nothing": FilterSpec(must=(Match("meta.color", "violet"),)),
}

STAGES: dict[str, Stages | None] = {
    "none": None,
    "oversampled": Stages(oversampling=4),
    "rescored": Stages(oversampling=4, exact_rescore=True),
    "quantized-rescored": Stages(oversampling=4, quantized=True, exact_rescore=True),
    "mmr-relevance": Stages(oversampling=3, mmr_lambda=1.0),
    "mmr-balanced": Stages(oversampling=3, mmr_lambda=0.5),
    "mmr-diverse": Stages(oversampling=3, mmr_lambda=0.0),
    "mmr-no-oversampling": Stages(mmr_lambda=0.3),
    "mmr-quantized-rescored": Stages(oversampling=4, quantized=True, exact_rescore=True, mmr_lambda=0.7),
}
QUANTIZED_FIRST_PASS: dict[str, Stages] = {
    "quantized": Stages(quantized=True),
    "quantized-oversampled": Stages(oversampling=4, quantized=True),
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VectorStore, VectorStore]]:
    edge = EdgeStore(tmp_path_factory.mktemp("congruence") / "edge", SCHEMA)
    qdrant = QdrantStore(":memory:", SCHEMA)
    for start in range(0, N_POINTS, 100):  # several writes, as ingest does
        edge.upsert(POINTS[start : start + 100])
        qdrant.upsert(POINTS[start : start + 100])
    edge.optimize()
    yield edge, qdrant
    edge.close()
    qdrant.close()


def assert_congruent(a: Sequence[StoredPoint], b: Sequence[StoredPoint], *, atol: float = SCORE_ATOL) -> None:
    """Same length, same score at every rank, and the same ids in the same order except within a
    run of tied scores (|difference| < atol), where any order is right; a tied run cut by the
    limit may hold different members, as long as their scores tie."""
    assert len(a) == len(b), ([p.id for p in a], [p.id for p in b])
    np.testing.assert_allclose([p.score for p in a], [p.score for p in b], atol=atol, rtol=0)
    start = 0
    while start < len(a):
        end = start + 1
        while end < len(a) and abs(a[end].score - a[end - 1].score) < atol:
            end += 1
        ids_a, ids_b = {p.id for p in a[start:end]}, {p.id for p in b[start:end]}
        if end < len(a):
            assert ids_a == ids_b, f"ranks {start}..{end - 1} differ: {ids_a ^ ids_b}"
        start = end
    by_id = {p.id: p.payload for p in b}
    assert all(p.payload == by_id[p.id] for p in a if p.id in by_id)


def compare(
    stores: tuple[VectorStore, VectorStore], run: Run, *, atol: float = SCORE_ATOL
) -> list[StoredPoint]:
    edge, qdrant = stores
    a = run(edge)
    assert_congruent(a, run(qdrant), atol=atol)
    return a


def compare_plan(
    stores: tuple[VectorStore, VectorStore], plan: QueryPlan, *, atol: float = SCORE_ATOL
) -> list[StoredPoint]:
    return compare(stores, lambda s: s.query_batch([plan])[0], atol=atol)


def test_the_edge_shard_scans_exactly(stores: tuple[VectorStore, VectorStore]) -> None:
    # The premise of exact congruence (module docstring): no graph, no int8 codes yet.
    edge = stores[0]
    assert isinstance(edge, EdgeStore)
    assert edge._shard.info().indexed_vectors_count == 0


def _dense_cases() -> list[tuple[str, str]]:
    # Left out, as the engines legitimately differ there: a query that is itself a stored point,
    # under MMR at lambda 0.5. Once that point is picked, a candidate's relevance and its
    # redundancy are the same similarity, so every MMR score is 0 and float rounding, not the
    # data, orders the rest (differently in each engine).
    def degenerate(query: str, st: Stages | None) -> bool:
        return query == "stored" and st is not None and st.mmr_lambda == 0.5

    return [(q, st) for q in QUERIES for st in STAGES if not degenerate(q, STAGES[st])]


@pytest.mark.parametrize(("query", "stages"), _dense_cases())
@pytest.mark.parametrize("exact", [False, True], ids=["ann", "exact"])
def test_dense_query_stages(
    stores: tuple[VectorStore, VectorStore], query: str, stages: str, exact: bool
) -> None:
    q, st = QUERIES[query], STAGES[stages]
    hits = compare(stores, lambda s: s.query(q, limit=25, exact=exact, stages=st))
    assert len(hits) == 25


@pytest.mark.parametrize("stages", QUANTIZED_FIRST_PASS)
def test_quantized_first_pass_keeps_recall(stores: tuple[VectorStore, VectorStore], stages: str) -> None:
    # Without re-scoring, the scores are those of the int8 codes wherever a shard has built them,
    # and in-process mode has no codes at all: ask for the same neighbours, not the same order.
    edge, qdrant = stores
    q, st = QUERIES["random"], QUANTIZED_FIRST_PASS[stages]
    got = {h.id for h in edge.query(q, limit=20, stages=st)}
    want = {h.id for h in qdrant.query(q, limit=20, stages=st)}
    assert len(got & want) / len(want) >= 0.9


def test_mmr_diversifies_the_same_way(stores: tuple[VectorStore, VectorStore]) -> None:
    # Both engines pick MMR's first hit by relevance and then trade relevance (lambda) against
    # the highest similarity to what is already picked, and both report each hit's relevance as
    # its score; in-process mode even breaks exact ties the way the engine does.
    q = QUERIES["random"]
    plain = compare(stores, lambda s: s.query(q, limit=15, stages=Stages(oversampling=3)))
    diverse = compare(stores, lambda s: s.query(q, limit=15, stages=Stages(oversampling=3, mmr_lambda=0.2)))
    assert diverse[0].id == plain[0].id
    assert [h.id for h in diverse] != [h.id for h in plain]


@pytest.mark.parametrize("flt", FILTERS)
def test_filters(stores: tuple[VectorStore, VectorStore], flt: str) -> None:
    spec, q = FILTERS[flt], QUERIES["random"]
    everything = compare(stores, lambda s: s.query(q, limit=N_POINTS, filter=spec, exact=True))
    compare(
        stores, lambda s: s.query(q, limit=10, filter=spec, stages=Stages(oversampling=4, exact_rescore=True))
    )
    compare(
        stores, lambda s: s.query(q, limit=10, filter=spec, stages=Stages(oversampling=3, mmr_lambda=0.5))
    )
    compare(stores, lambda s: s.query(q, limit=10, filter=spec, frames_prefetch=60))
    compare(stores, lambda s: s.recommend([q], [POINTS[3].vector], limit=10, filter=spec))
    compare(
        stores,
        lambda s: s.fuse([q, POINTS[4].vector], weights=[1.0, 2.0], limit=10, per_query=20, filter=spec),
        atol=RRF_ATOL,
    )
    edge, qdrant = stores
    assert edge.count(spec) == qdrant.count(spec) == len(everything)
    if flt == "matches-nothing":
        assert everything == []
    elif flt != "none":
        assert 0 < len(everything) < N_POINTS  # the filter restricts, so the comparison means something


@pytest.mark.parametrize("query", QUERIES)
def test_frames_max_sim(stores: tuple[VectorStore, VectorStore], query: str) -> None:
    q = QUERIES[query]
    for prefetch in (20, 200):
        hits = compare_plan(stores, DenseQuery(q, 10, frames_prefetch=prefetch))
        # Points without frames drop out of MAX_SIM re-scoring.
        assert all(h.payload.get("track") == "visual" for h in hits)
    assert len(hits) == 10  # 200 candidates hold enough segments with frames
    if query == "frame":
        assert hits[0].id == POINTS[11].id


def test_score_threshold(stores: tuple[VectorStore, VectorStore]) -> None:
    q = QUERIES["stored"]
    for st in (None, Stages(oversampling=4, exact_rescore=True), Stages(oversampling=3, mmr_lambda=0.6)):
        hits = compare_plan(stores, DenseQuery(q, 50, score_threshold=0.3, stages=st))
        assert hits and all(h.score >= 0.3 for h in hits)
    framed = compare(stores, lambda s: s.query(q, limit=50, score_threshold=0.2, frames_prefetch=200))
    assert all(h.score >= 0.2 for h in framed)


def test_exclude_ids(stores: tuple[VectorStore, VectorStore]) -> None:
    q = QUERIES["stored"]
    banned = [p.id for p in POINTS[8:14]]
    for plan in (
        DenseQuery(q, 20, exclude_ids=tuple(banned)),
        DenseQuery(q, 20, exclude_ids=tuple(banned), stages=Stages(oversampling=4, mmr_lambda=0.6)),
        DenseQuery(q, 20, exclude_ids=tuple(banned), frames_prefetch=100),
    ):
        hits = compare_plan(stores, plan)
        assert hits and not {h.id for h in hits} & set(banned)
    spec = FilterSpec(must_not=(Match("meta.color", "red"),))
    rec = compare(stores, lambda s: s.recommend([q], [], limit=20, filter=spec, exclude_ids=banned))
    fused = compare(
        stores,
        lambda s: s.fuse([q, q], weights=[1, 1], limit=20, per_query=30, exclude_ids=banned),
        atol=RRF_ATOL,
    )
    assert not {h.id for h in rec + fused} & set(banned)


@pytest.mark.parametrize("strategy", ["best_score", "sum_scores"])
def test_recommend(stores: tuple[VectorStore, VectorStore], strategy: Strategy) -> None:
    pos, neg = [POINTS[1].vector, POINTS[2].vector], [POINTS[5].vector, QUERIES["random"]]
    hits = compare(stores, lambda s: s.recommend(pos, neg, limit=30, strategy=strategy))
    compare(stores, lambda s: s.recommend(pos[:1], [], limit=30, strategy=strategy))
    assert {POINTS[1].id, POINTS[2].id} <= {h.id for h in hits}


@pytest.mark.parametrize("weights", [(1.0, 1.0), (3.0, 0.5), (0.2, 1.0, 2.0)])
def test_rrf_fusion(stores: tuple[VectorStore, VectorStore], weights: tuple[float, ...]) -> None:
    vectors = [QUERIES["random"], POINTS[20].vector, POINTS[30].vector][: len(weights)]
    for per_query in (5, 40):
        plan = FusionQuery(tuple(vectors), weights, 30, per_query=per_query)
        hits = compare_plan(stores, plan, atol=RRF_ATOL)
        assert all(x.score >= y.score for x, y in itertools.pairwise(hits))


def test_batch_equals_one_by_one(stores: tuple[VectorStore, VectorStore]) -> None:
    q = QUERIES["random"]
    plans: list[QueryPlan] = [
        DenseQuery(q, 10, stages=Stages(oversampling=4, exact_rescore=True)),
        DenseQuery(q, 10, filter=FILTERS["nested"], frames_prefetch=80),
        DenseQuery(POINTS[7].vector, 5, exclude_ids=(POINTS[7].id,), stages=Stages(mmr_lambda=0.5)),
        RecommendQuery((q,), (POINTS[3].vector,), 10, strategy="sum_scores"),
        FusionQuery((q, POINTS[4].vector), (1.0, 2.0), 10, per_query=20),
    ]
    edge, qdrant = stores
    batched = [edge.query_batch(plans), qdrant.query_batch(plans)]
    for store, results in zip(stores, batched, strict=True):
        assert len(results) == len(plans)
        for plan, got in zip(plans, results, strict=True):
            assert_congruent(got, store.query_batch([plan])[0], atol=RRF_ATOL)
    for a, b in zip(*batched, strict=True):
        assert_congruent(a, b)
    assert edge.query_batch([]) == qdrant.query_batch([]) == []


@pytest.mark.parametrize("flt", ["none", "keyword", "nested", "should", "matches-nothing"])
def test_scroll_pages_and_count(stores: tuple[VectorStore, VectorStore], flt: str) -> None:
    spec = FILTERS[flt]
    edge, qdrant = stores
    pages: list[list[list[str]]] = []
    for store in stores:
        offset, seen = None, []
        while True:
            page, offset = store.scroll(limit=37, offset=offset, filter=spec)
            seen.append([p.id for p in page])
            if offset is None:
                break
        pages.append(seen)
    assert pages[0] == pages[1]  # same pages in the same (id) order
    assert sum(map(len, pages[0])) == edge.count(spec) == qdrant.count(spec)


def test_get_returns_the_same_points(stores: tuple[VectorStore, VectorStore]) -> None:
    ids = [p.id for p in POINTS[::17]] + [point_id("missing")]
    edge, qdrant = stores
    a = {p.id: p for p in edge.get(ids, with_vectors=True)}
    b = {p.id: p for p in qdrant.get(ids, with_vectors=True)}
    assert a.keys() == b.keys() == set(ids[:-1])
    for pid, p in a.items():
        assert p.payload == b[pid].payload
        va, vb = p.vector, b[pid].vector
        assert va is not None and vb is not None
        np.testing.assert_allclose(va, vb, atol=1e-6)
    assert edge.info().by_modality == qdrant.info().by_modality


def test_writes_stay_congruent(tmp_path: Path) -> None:
    edge, qdrant = EdgeStore(tmp_path / "edge", SCHEMA), QdrantStore(":memory:", SCHEMA)
    try:
        for store in (edge, qdrant):
            store.upsert(POINTS[:60])
            store.delete([p.id for p in POINTS[:60:4]])
            # Re-upsert with another vector and payload: the point moves and its payload changes.
            store.upsert([PointRecord(POINTS[1].id, POINTS[50].vector, {"modality": "text", "source": "x"})])
        assert edge.count() == qdrant.count() == 45
        compare((edge, qdrant), lambda s: s.query(POINTS[50].vector, limit=45, exact=True))
    finally:
        edge.close()
        qdrant.close()

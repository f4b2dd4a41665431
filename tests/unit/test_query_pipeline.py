"""The query pipeline on controlled vectors: stages, MMR, negatives, fusion, calibration, mining."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from encoders.calibration import Calibration, fit_platt
from encoders.embed import Embedder
from encoders.encoder import Encoder
from indexer.schema import CollectionSchema, PointRecord, point_id
from indexer.store import Stages, VectorStore
from server.config import ServerConfig
from server.context import background
from server.errors import InvalidArgument, NotFound
from server.planner import SearchParams
from server.query_types import MultiQuery, QueryInput
from server.services import Services, make_services

MakeStore = Callable[..., VectorStore]
DIM = 64

CTX = background()


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture
def world(encoder: Encoder, store_factory: MakeStore) -> tuple[Services, dict[str, list[str]]]:
    """Three classes of 'image' points around three centres, plus one long 'video' whose 12
    segments all sit near class a."""
    rng = np.random.default_rng(7)
    centres = {c: _unit(rng.normal(size=DIM)) for c in "abc"}
    store = store_factory(CollectionSchema(bundle_id=encoder.bundle.bundle_id, dim=DIM))
    ids: dict[str, list[str]] = {c: [] for c in [*"abc", "video"]}
    records = []
    for c, centre in centres.items():
        for i in range(12):
            pid = point_id(f"{c}{i}")
            ids[c].append(pid)
            vec = _unit(centre + 0.35 * rng.normal(size=DIM) / np.sqrt(DIM) * 4)
            records.append(
                PointRecord(pid, vec, {"modality": "image", "media_id": pid, "meta": {"label": c}})
            )
    for k in range(12):
        pid = point_id("video", k)
        ids["video"].append(pid)
        vec = _unit(centres["a"] + 0.05 * rng.normal(size=DIM))
        records.append(
            PointRecord(pid, vec, {"modality": "video", "track": "audio", "media_id": "long-video"})
        )
    store.upsert(records)
    engine = make_services(Embedder(encoder), store, ServerConfig())
    return engine, ids


def test_mmr_gives_fewer_hits_from_one_media(world: tuple[Services, dict[str, list[str]]]) -> None:
    engine, ids = world
    query = QueryInput(id=ids["a"][0])
    plain = engine.queries.search(CTX, query, SearchParams(top_k=10, group_size=100)).hits
    diverse = engine.queries.search(
        CTX, query, SearchParams(top_k=10, group_size=100, stages=Stages(oversampling=4, mmr_lambda=0.3))
    ).hits

    def from_video(hits: list) -> int:  # type: ignore[type-arg]
        return sum(h.payload["media_id"] == "long-video" for h in hits[:10])

    assert from_video(diverse) < from_video(plain)
    assert diverse[0].id == plain[0].id


def test_a_negative_example_drops_the_pushed_away_class(
    world: tuple[Services, dict[str, list[str]]],
) -> None:
    engine, ids = world
    # A positive halfway between a and b: without negatives both classes fill the top.
    mixed = MultiQuery(((QueryInput(id=ids["a"][1]), 1.0), (QueryInput(id=ids["b"][1]), 1.0)))
    plain = engine.queries.search(CTX, mixed, SearchParams(top_k=10, modalities=())).hits
    assert {h.payload.get("meta", {}).get("label") for h in plain} >= {"a", "b"}
    pushed = MultiQuery(mixed.positives, ((QueryInput(id=ids["b"][2]), 1.0),))
    hits = engine.queries.search(CTX, pushed, SearchParams(top_k=10)).hits
    labels = [h.payload.get("meta", {}).get("label") for h in hits]
    assert labels.count("b") < [h.payload.get("meta", {}).get("label") for h in plain].count("b")
    assert all(h.calibrated is not None for h in hits)


def test_weights_and_rrf_fusion(world: tuple[Services, dict[str, list[str]]]) -> None:
    engine, ids = world
    a, b = QueryInput(id=ids["a"][3]), QueryInput(id=ids["b"][3])
    toward_b = engine.queries.search(CTX, MultiQuery(((a, 0.1), (b, 3.0))), SearchParams(top_k=5)).hits
    toward_a = engine.queries.search(CTX, MultiQuery(((a, 3.0), (b, 0.1))), SearchParams(top_k=5)).hits
    label = lambda h: h.payload.get("meta", {}).get("label")  # noqa: E731
    assert label(toward_b[0]) == "b" and label(toward_a[0]) in ("a", None)
    fused = engine.queries.search(
        CTX, MultiQuery(((a, 1.0), (b, 1.0))), SearchParams(top_k=12, fusion="rrf")
    ).hits
    assert {label(h) for h in fused} >= {"a", "b"}


@pytest.mark.parametrize(
    ("query", "params", "error", "needle"),
    [
        (
            MultiQuery(((QueryInput(text="x"), -1.0),)),
            SearchParams(top_k=3),
            InvalidArgument,
            "positives[0].weight",
        ),
        (
            MultiQuery(((QueryInput(text="x"), float("inf")),)),
            SearchParams(top_k=3),
            InvalidArgument,
            "finite",
        ),
        (MultiQuery(()), SearchParams(top_k=3), InvalidArgument, "positives is empty"),
        (
            MultiQuery((), ((QueryInput(text="x"), 1.0),)),
            SearchParams(top_k=3),
            InvalidArgument,
            "negative-only",
        ),
        (
            QueryInput(text="x"),
            SearchParams(top_k=3, stages=Stages(mmr_lambda=1.5)),
            InvalidArgument,
            "mmr_lambda",
        ),
        (
            QueryInput(text="x"),
            SearchParams(top_k=3, stages=Stages(oversampling=0.5)),
            InvalidArgument,
            "oversampling",
        ),
        (
            MultiQuery(((QueryInput(id="nope"), 1.0),)),
            SearchParams(top_k=3),
            NotFound,
            "positives[0].input.id",
        ),
        (
            MultiQuery(((QueryInput(text="x"), 1.0),), ((QueryInput(text="y"), 1.0),)),
            SearchParams(top_k=3, fusion="rrf"),
            InvalidArgument,
            "RRF",
        ),
    ],
)
def test_bad_multi_input_queries(
    world: tuple[Services, dict[str, list[str]]],
    query: object,
    params: SearchParams,
    error: type[Exception],
    needle: str,
) -> None:
    engine, _ = world
    with pytest.raises(error) as exc:
        engine.queries.search(CTX, query, params)  # type: ignore[arg-type]
    assert needle in str(exc.value)


def test_recommend_by_ids(world: tuple[Services, dict[str, list[str]]]) -> None:
    engine, ids = world
    hits = engine.queries.recommend(
        CTX, [ids["c"][0], ids["c"][1]], [ids["a"][0]], SearchParams(top_k=5)
    ).hits
    assert hits and all(h.payload.get("meta", {}).get("label") == "c" for h in hits)
    assert not {ids["c"][0], ids["c"][1], ids["a"][0]} & {h.id for h in hits}
    with pytest.raises(InvalidArgument, match="positive_ids is empty"):
        engine.queries.recommend(CTX, [], [ids["a"][0]], SearchParams(top_k=5))


def test_mining_excludes_positives_and_their_group(world: tuple[Services, dict[str, list[str]]]) -> None:
    engine, ids = world
    negatives, best = engine.mining.mine(CTX, [], [ids["a"][0]], k=5, group_key="label", modalities=())
    assert best is not None and len(negatives) == 5
    assert all(h.payload.get("meta", {}).get("label") != "a" for h in negatives)
    assert ids["a"][0] not in {h.id for h in negatives}
    assert all(h.score <= 0.95 * best for h in negatives)
    with pytest.raises(InvalidArgument, match="mining needs an anchor"):
        engine.mining.mine(CTX, [], [], k=5)
    with pytest.raises(InvalidArgument, match="max_fraction_of_positive"):
        engine.mining.mine(CTX, [], [ids["a"][0]], k=5, max_fraction_of_positive=1.5)


def test_calibrated_thresholds_keep_the_same_share_of_relevant_hits() -> None:
    """Two pairs whose raw scores live in different ranges: one raw threshold keeps almost all
    relevant hits of one pair and almost none of the other; one calibrated threshold keeps about
    the same share of each."""
    rng = np.random.default_rng(1)

    def pair(rel_mean: float, irr_mean: float, spread: float) -> tuple[np.ndarray, np.ndarray]:
        s = np.r_[rng.normal(rel_mean, spread, 300), rng.normal(irr_mean, spread, 3000)]
        return s, np.r_[np.ones(300), np.zeros(3000)]

    pairs = {"text->image": pair(0.32, 0.18, 0.04), "audio->video": pair(0.85, 0.6, 0.07)}
    calibration = Calibration({k: fit_platt(s, y) for k, (s, y) in pairs.items()})

    def kept(name: str, threshold: float, calibrated: bool) -> float:
        s, y = pairs[name]
        q, t = name.split("->")
        values = np.array([calibration.score(q, t, float(x)) for x in s]) if calibrated else s
        return float(((values >= threshold) & (y > 0)).sum() / y.sum())

    raw = [kept(n, 0.4, False) for n in pairs]
    cal = [kept(n, 0.5, True) for n in pairs]
    assert abs(raw[0] - raw[1]) > 0.5
    assert abs(cal[0] - cal[1]) < 0.15 and min(cal) > 0.3

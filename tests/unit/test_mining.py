from __future__ import annotations

from collections.abc import Callable

import numpy as np

from indexer.filters import FilterSpec, Match
from indexer.mining import MiningParams, mine_hard_negatives
from indexer.schema import CollectionSchema, PointRecord, point_id
from indexer.store import VectorStore

MakeStore = Callable[..., VectorStore]


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_mining_filters_false_negatives(store_factory: MakeStore) -> None:
    store = store_factory(CollectionSchema(bundle_id="b", dim=8))
    rng = np.random.default_rng(0)
    anchor = _unit(rng.normal(size=8))

    def at(cos: float) -> np.ndarray:
        """A unit vector at exactly this cosine from the anchor."""
        r = rng.normal(size=8)
        ortho = _unit(r - (r @ anchor) * anchor)
        return _unit(cos * anchor + np.sqrt(1 - cos**2) * ortho)

    points = {
        "dup": (at(0.995), "dog", "t"),  # near-duplicate of the anchor
        "same-group": (at(0.9), "cat", "t"),  # the anchor's own group
        "too-close": (at(0.85), "dog", "t"),  # above the fraction of the positive's score
        "hard-1": (at(0.7), "dog", "t"),
        "hard-2": (at(0.6), "fox", "t"),
        "other-modality": (at(0.8), "dog", "i"),
        "easy": (at(-0.5), "dog", "t"),
    }
    store.upsert(
        [
            PointRecord(point_id(k), v, {"group": g, "modality": m, "name": k})
            for k, (v, g, m) in points.items()
        ]
    )
    positive_score = 0.8
    found = mine_hard_negatives(
        store,
        anchor,
        params=MiningParams(k=2, max_fraction_of_positive=0.95, near_duplicate=0.99),
        positive_score=positive_score,
        group="cat",
        filter=FilterSpec(must=(Match("modality", "t"),)),
    )
    names = [f.payload["name"] for f in found]
    assert names == ["hard-1", "hard-2"]
    assert all(f.score <= 0.95 * positive_score for f in found)

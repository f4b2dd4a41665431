"""Hard-negative mining over a VectorStore: the nearest non-positives of an anchor.

Used by the trainer (negatives from an index built with the current model) and by the server's
mining RPC. A candidate is dropped as a likely false negative when it is in the anchor's group,
is a near-duplicate of the anchor (or shares a positive's content), or scores above a set
fraction of the positive's score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from indexer.filters import FilterSpec, Match
from indexer.schema import StoredPoint
from indexer.store import VectorStore


@dataclass(frozen=True)
class MiningParams:
    k: int = 4
    max_fraction_of_positive: float | None = 0.95  # None: keep candidates however close to the positive
    near_duplicate: float = 0.98  # cosine to the anchor at or above which a candidate is a duplicate
    group_key: str | None = "group"  # payload key whose equality marks the same group
    oversample: int = 4  # candidates fetched per negative wanted, to survive the filters


def mine_hard_negatives(
    store: VectorStore,
    anchor: np.ndarray,
    *,
    params: MiningParams,
    positive_score: float | None = None,
    group: str | None = None,
    filter: FilterSpec | None = None,
    exclude_ids: Sequence[str] = (),
    exclude_content_hashes: Sequence[str] = (),
) -> list[StoredPoint]:
    """Up to `params.k` hard negatives for `anchor`, hardest first."""
    spec = filter or FilterSpec()
    if group is not None and params.group_key:
        spec = FilterSpec(spec.must, (*spec.must_not, Match(params.group_key, group)), spec.should)
    limit = params.k * params.oversample + len(exclude_ids)
    candidates = store.query(anchor, limit=limit, filter=spec, exclude_ids=exclude_ids)
    ceiling = None
    if positive_score is not None and params.max_fraction_of_positive is not None:
        ceiling = params.max_fraction_of_positive * positive_score
    hashes = set(exclude_content_hashes)
    out: list[StoredPoint] = []
    for c in candidates:
        if c.score >= params.near_duplicate:
            continue
        if ceiling is not None and c.score > ceiling:
            continue
        if hashes and c.payload.get("content_hash") in hashes:
            continue
        out.append(c)
        if len(out) == params.k:
            break
    return out

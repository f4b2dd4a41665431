"""Hard-negative mining: the nearest non-positives of an anchor, with false-negative filters.

One set of filters (:func:`select_negatives`) serves both callers: the server's mining RPC, which
takes candidates from a VectorStore, and the trainer, which scores its in-memory items with one
matrix product. A candidate is dropped as a likely false negative when it is in the anchor's group,
is a near-duplicate of the anchor (or shares a positive's content), or scores above a set fraction
of the positive's score.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from indexer.filters import FilterSpec, Match
from indexer.schema import Key, StoredPoint
from indexer.store import VectorStore

GROUP_KEY = "group"


@dataclass(frozen=True)
class MiningParams:
    k: int = 4
    max_fraction_of_positive: float | None = 0.95  # None: keep candidates however close to the positive
    near_duplicate: float = 0.98  # cosine to the anchor at or above which a candidate is a duplicate
    group_key: str | None = GROUP_KEY  # payload key whose equality marks the same group
    oversample: int = 4  # candidates fetched per negative wanted, to survive the filters


@dataclass(frozen=True)
class Candidate:
    """A scored candidate as the filters see it, wherever it came from."""

    index: int  # position in the caller's candidate list
    score: float
    content_hash: str | None = None


def select_negatives(
    candidates: Iterable[Candidate],
    params: MiningParams,
    *,
    positive_score: float | None = None,
    exclude_content_hashes: Sequence[str] = (),
) -> list[int]:
    """Indices of up to `params.k` candidates that pass the false-negative filters, in the order
    given (hardest first when the candidates are sorted by score). Group and id exclusions are the
    caller's, applied before scoring."""
    ceiling = None
    if positive_score is not None and params.max_fraction_of_positive is not None:
        ceiling = params.max_fraction_of_positive * positive_score
    hashes = set(exclude_content_hashes)
    out: list[int] = []
    for c in candidates:
        if c.score >= params.near_duplicate:
            continue
        if ceiling is not None and c.score > ceiling:
            continue
        if hashes and c.content_hash in hashes:
            continue
        out.append(c.index)
        if len(out) == params.k:
            break
    return out


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
    """Up to `params.k` hard negatives for `anchor` from a store, hardest first."""
    spec = filter or FilterSpec()
    if group is not None and params.group_key:
        spec = FilterSpec(spec.must, (*spec.must_not, Match(params.group_key, group)), spec.should)
    limit = params.k * params.oversample + len(exclude_ids)
    found = store.query(anchor, limit=limit, filter=spec, exclude_ids=exclude_ids)
    keep = select_negatives(
        (Candidate(i, h.score, h.payload.get(Key.CONTENT_HASH)) for i, h in enumerate(found)),
        params,
        positive_score=positive_score,
        exclude_content_hashes=exclude_content_hashes,
    )
    return [found[i] for i in keep]


def mine_in_memory(
    anchor: np.ndarray,
    vectors: np.ndarray,
    params: MiningParams,
    *,
    positive_score: float | None = None,
    excluded: np.ndarray | None = None,
) -> list[int]:
    """Up to `params.k` hard negatives for `anchor` among the rows of `vectors` (unit rows), by
    one matrix product; `excluded` masks rows that may not be negatives (same group, the pair)."""
    scores = vectors @ anchor
    if excluded is not None:
        scores = np.where(excluded, -np.inf, scores)
    order = np.argsort(-scores, kind="stable")
    ranked = (Candidate(int(i), float(scores[i])) for i in order if np.isfinite(scores[i]))
    return select_negatives(ranked, params, positive_score=positive_score)

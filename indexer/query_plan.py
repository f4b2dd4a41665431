"""A store-neutral query plan, built once for every adapter.

Callers describe what they want (`DenseQuery`, `RecommendQuery`, `FusionQuery`); `stage_tree` turns
that into Qdrant's query-API shape (prefetch -> rescore -> MMR, frames MAX_SIM, recommend, RRF) in
neutral nodes; `translate` walks the tree and hands each node to an adapter's `Translator`, which
only names its library's objects. Every decision (which stages, how many candidates, which
quantization flags, excluded ids as a `has_id` must_not) is made here, not in the adapters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

import numpy as np

from indexer.filters import Condition, FilterSpec, IsEmpty, Match, MatchAny, Range
from indexer.schema import DENSE, FRAMES

RRF_K = 60  # the usual reciprocal-rank-fusion constant

Strategy = Literal["best_score", "sum_scores"]
Vector = list[float]


@dataclass(frozen=True)
class Stages:
    """The stages of a dense query, on Qdrant's query API: an ANN prefetch (optionally over the
    int8-quantized vectors, oversampled), then re-scoring of those candidates on the full float
    vectors, then optionally MMR diversity over them."""

    oversampling: float = 1.0  # ANN candidates fetched per result wanted
    quantized: bool = False
    exact_rescore: bool = False
    mmr_lambda: float | None = None  # 1: relevance only ... 0: diversity only

    @property
    def multi_stage(self) -> bool:
        return self.oversampling > 1 or self.exact_rescore or self.mmr_lambda is not None or self.quantized

    def candidates(self, limit: int) -> int:
        return max(limit, math.ceil(limit * self.oversampling))


# -- what a caller asks ---------------------------------------------------------------------


@dataclass(frozen=True)
class DenseQuery:
    """Nearest points by cosine similarity; see VectorStore.query for the fields."""

    vector: np.ndarray
    limit: int
    _: KW_ONLY
    filter: FilterSpec | None = None
    score_threshold: float | None = None
    exclude_ids: tuple[str, ...] = ()
    exact: bool = False
    frames_prefetch: int | None = None
    stages: Stages | None = None


@dataclass(frozen=True)
class RecommendQuery:
    """Close to the positives and away from the negatives (Qdrant's recommend)."""

    positives: tuple[np.ndarray, ...]
    negatives: tuple[np.ndarray, ...]
    limit: int
    _: KW_ONLY
    strategy: Strategy = "best_score"
    filter: FilterSpec | None = None
    exclude_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class FusionQuery:
    """Weighted reciprocal rank fusion of one nearest-neighbour list (`per_query` long) per vector."""

    vectors: tuple[np.ndarray, ...]
    weights: tuple[float, ...]
    limit: int
    _: KW_ONLY
    per_query: int
    filter: FilterSpec | None = None
    exclude_ids: tuple[str, ...] = ()


QueryPlan = DenseQuery | RecommendQuery | FusionQuery


# -- the stage tree, in neutral nodes -------------------------------------------------------


@dataclass(frozen=True)
class Nearest:
    vector: Vector | list[Vector]  # a list of vectors for a multivector (MAX_SIM) space
    using: str


@dataclass(frozen=True)
class Mmr:
    vector: Vector
    lambda_: float  # 1: relevance only ... 0: diversity only (Qdrant's diversity is 1 - lambda_)
    candidates: int
    using: str


@dataclass(frozen=True)
class Recommend:
    positives: list[Vector]
    negatives: list[Vector]
    strategy: Strategy
    using: str


@dataclass(frozen=True)
class Rrf:
    weights: list[float]
    k: int = RRF_K


Scoring = Nearest | Mmr | Recommend | Rrf


@dataclass(frozen=True)
class HasId:
    ids: tuple[str, ...]


PointCondition = Condition | HasId


@dataclass(frozen=True)
class PointFilter:
    """A FilterSpec plus point-id conditions, as both engines' filters hold them."""

    must: tuple[PointCondition, ...] = ()
    must_not: tuple[PointCondition, ...] = ()
    should: tuple[PointCondition, ...] = ()


@dataclass(frozen=True)
class Params:
    hnsw_ef: int | None = None
    exact: bool = False
    ignore_quantization: bool = False  # True: score on the full float vectors


@dataclass(frozen=True)
class Stage:
    """One level of the tree: the request itself at the root, a prefetch below it."""

    scoring: Scoring
    limit: int
    filter: PointFilter | None = None
    params: Params | None = None
    score_threshold: float | None = None
    prefetch: tuple[Stage, ...] = ()


def point_filter(spec: FilterSpec | None, exclude_ids: Sequence[str] = ()) -> PointFilter | None:
    """The spec with `exclude_ids` as a `has_id` must_not; None when nothing restricts."""
    if (spec is None or spec.is_empty()) and not exclude_ids:
        return None
    spec = spec or FilterSpec()
    excluded = (HasId(tuple(exclude_ids)),) if exclude_ids else ()
    return PointFilter(spec.must, spec.must_not + excluded, spec.should)


def stage_tree(plan: QueryPlan, *, hnsw_ef: int | None) -> Stage:
    """The query-API tree that answers `plan`; `hnsw_ef` is the store's search-time beam width."""
    if isinstance(plan, RecommendQuery):
        rec = Recommend(
            [_vec(v) for v in plan.positives], [_vec(v) for v in plan.negatives], plan.strategy, DENSE
        )
        return Stage(rec, plan.limit, point_filter(plan.filter, plan.exclude_ids), Params(hnsw_ef=hnsw_ef))
    if isinstance(plan, FusionQuery):
        where = point_filter(plan.filter, plan.exclude_ids)
        lists = tuple(Stage(Nearest(_vec(v), DENSE), plan.per_query, where) for v in plan.vectors)
        return Stage(Rrf(list(plan.weights)), plan.limit, prefetch=lists)
    return _dense_tree(plan, hnsw_ef)


def _dense_tree(plan: DenseQuery, hnsw_ef: int | None) -> Stage:
    q = _vec(plan.vector)
    stages = plan.stages
    quantized = stages is not None and stages.quantized
    ann_params = Params(hnsw_ef=hnsw_ef, exact=plan.exact, ignore_quantization=not quantized)
    where = point_filter(plan.filter, plan.exclude_ids)
    if plan.frames_prefetch:
        # The query as a one-vector multivector: MAX_SIM against each candidate's frames.
        ann = Stage(Nearest(q, DENSE), plan.frames_prefetch, where, ann_params)
        return Stage(Nearest([q], FRAMES), plan.limit, score_threshold=plan.score_threshold, prefetch=(ann,))
    if stages is None or not stages.multi_stage:
        return Stage(Nearest(q, DENSE), plan.limit, where, ann_params, plan.score_threshold)
    n = stages.candidates(plan.limit)
    ann = Stage(Nearest(q, DENSE), n, where, ann_params)
    outer: Scoring = Nearest(q, DENSE) if stages.mmr_lambda is None else Mmr(q, stages.mmr_lambda, n, DENSE)
    # The re-scoring stage reads the full float vectors unless told to stay quantized.
    # The re-scoring stage reads the full vectors unless the caller asked for a quantized search
    # and declined exact re-scoring: an unquantized search must never score by the int8 codes.
    rescore = Params(ignore_quantization=stages.exact_rescore or not stages.quantized)
    return Stage(outer, plan.limit, params=rescore, score_threshold=plan.score_threshold, prefetch=(ann,))


def _vec(v: np.ndarray) -> Vector:
    out: Vector = np.asarray(v, dtype=np.float32).tolist()
    return out


# -- translation ----------------------------------------------------------------------------

R_co = TypeVar("R_co", covariant=True)


class Parts(NamedTuple):
    """A stage's children, already in the adapter's objects."""

    query: Any
    filter: Any
    params: Any
    prefetch: list[Any] | None


class Translator(Protocol[R_co]):
    """An adapter's names for the neutral nodes; `translate` decides which to call."""

    def nearest(self, node: Nearest) -> Any: ...
    def mmr(self, node: Mmr) -> Any: ...
    def recommend(self, node: Recommend) -> Any: ...
    def rrf(self, node: Rrf) -> Any: ...
    def match(self, key: str, value: str | int | bool) -> Any: ...
    def match_any(self, key: str, values: tuple[str, ...]) -> Any: ...
    def range(self, cond: Range) -> Any: ...
    def has_id(self, ids: tuple[str, ...]) -> Any: ...
    def is_empty(self, key: str) -> Any: ...
    def filter(self, must: list[Any] | None, must_not: list[Any] | None, should: list[Any] | None) -> Any: ...
    def params(self, params: Params) -> Any: ...
    def prefetch(self, stage: Stage, parts: Parts) -> Any: ...
    def request(self, stage: Stage, parts: Parts) -> R_co: ...


def translate(root: Stage, t: Translator[R_co]) -> R_co:
    """The adapter's request for the tree under `root`."""
    return t.request(root, _parts(root, t))


def translate_filter(f: PointFilter | None, t: Translator[Any]) -> Any:
    if f is None:
        return None

    def group(conds: tuple[PointCondition, ...]) -> list[Any] | None:
        return [_condition(c, t) for c in conds] or None

    return t.filter(group(f.must), group(f.must_not), group(f.should))


def _parts(stage: Stage, t: Translator[Any]) -> Parts:
    return Parts(
        query=_scoring(stage.scoring, t),
        filter=translate_filter(stage.filter, t),
        params=None if stage.params is None else t.params(stage.params),
        prefetch=[t.prefetch(p, _parts(p, t)) for p in stage.prefetch] or None,
    )


def _scoring(node: Scoring, t: Translator[Any]) -> Any:
    if isinstance(node, Nearest):
        return t.nearest(node)
    if isinstance(node, Mmr):
        return t.mmr(node)
    if isinstance(node, Recommend):
        return t.recommend(node)
    return t.rrf(node)


def _condition(c: PointCondition, t: Translator[Any]) -> Any:
    if isinstance(c, Match):
        return t.match(c.key, c.value)
    if isinstance(c, MatchAny):
        return t.match_any(c.key, c.values)
    if isinstance(c, HasId):
        return t.has_id(c.ids)
    if isinstance(c, IsEmpty):
        return t.is_empty(c.key)
    return t.range(c)

"""The VectorStore interface every adapter implements, and the errors stores raise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from indexer.filters import FilterSpec
from indexer.schema import CollectionSchema, PointRecord, StoredPoint, StoreInfo

RRF_K = 60  # the usual reciprocal-rank-fusion constant


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


class StoreError(Exception):
    """A store operation failed."""


class BundleMismatchError(StoreError):
    """The collection holds vectors from another embedding space than the one in use."""

    def __init__(self, where: str, stored: str, requested: str) -> None:
        super().__init__(
            f"{where} holds vectors from bundle {stored}, but bundle {requested} was requested. "
            "Vectors from different bundles are not comparable: load the bundle that built this "
            "index, or use a new data directory / collection and re-ingest."
        )
        self.stored = stored
        self.requested = requested


class StoreLockedError(StoreError):
    """An embedded store directory is already open in another process."""


class VectorStore(Protocol):
    """One collection of points in one embedding space."""

    kind: str
    schema: CollectionSchema

    def upsert(self, points: Sequence[PointRecord]) -> None:
        """Write points; raises StoreError for a vector of the wrong shape before writing any."""
        ...

    def query(
        self,
        vector: np.ndarray,
        *,
        limit: int,
        filter: FilterSpec | None = None,
        score_threshold: float | None = None,
        exclude_ids: Sequence[str] = (),
        exact: bool = False,
        frames_prefetch: int | None = None,
        stages: Stages | None = None,
    ) -> list[StoredPoint]:
        """Nearest points by cosine similarity, best first.

        With `frames_prefetch`, the top that-many points by dense similarity are re-scored by
        MAX_SIM between the query and their frame vectors; points without frames drop out.
        Otherwise `stages` shapes the dense query (see Stages)."""
        ...

    def recommend(
        self,
        positives: Sequence[np.ndarray],
        negatives: Sequence[np.ndarray],
        *,
        limit: int,
        strategy: Literal["best_score", "sum_scores"] = "best_score",
        filter: FilterSpec | None = None,
        exclude_ids: Sequence[str] = (),
    ) -> list[StoredPoint]:
        """Qdrant's recommend: close to the positives and away from the negatives."""
        ...

    def fuse(
        self,
        vectors: Sequence[np.ndarray],
        *,
        weights: Sequence[float],
        limit: int,
        per_query: int,
        filter: FilterSpec | None = None,
        exclude_ids: Sequence[str] = (),
    ) -> list[StoredPoint]:
        """Reciprocal rank fusion of one nearest-neighbour list per vector (`per_query` each);
        scores are the fused RRF scores."""
        ...

    def get(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[StoredPoint]:
        """Points that exist among `ids` (missing ids are left out), in no set order."""
        ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def count(self, filter: FilterSpec | None = None) -> int: ...

    def scroll(
        self, *, limit: int, offset: str | None = None, filter: FilterSpec | None = None
    ) -> tuple[list[StoredPoint], str | None]:
        """One page of points and the offset of the next page (None at the end)."""
        ...

    def optimize(self) -> None:
        """Build pending indexes (HNSW) so queries run at full speed."""
        ...

    def info(self) -> StoreInfo: ...

    def close(self) -> None: ...


def matching_ids(store: VectorStore, filter: FilterSpec, *, page_size: int = 256) -> list[str]:
    """Ids of every point matching `filter`, paging through the store."""
    ids: list[str] = []
    offset: str | None = None
    while True:
        page, offset = store.scroll(limit=page_size, offset=offset, filter=filter)
        ids.extend(p.id for p in page)
        if offset is None:
            return ids


def check_shapes(points: Sequence[PointRecord], dim: int) -> None:
    for p in points:
        if p.vector.shape != (dim,):
            raise StoreError(f"point {p.id}: vector shape {p.vector.shape}, expected ({dim},)")
        if p.frames is not None and (p.frames.ndim != 2 or p.frames.shape[1] != dim or len(p.frames) == 0):
            raise StoreError(f"point {p.id}: frames shape {p.frames.shape}, expected (n >= 1, {dim})")

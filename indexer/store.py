"""The VectorStore interface every adapter implements, and the errors stores raise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from encoders.modality import Modality
from indexer.filters import FilterSpec, Match
from indexer.query_plan import DenseQuery, FusionQuery, QueryPlan, RecommendQuery, Strategy
from indexer.query_plan import Stages as Stages
from indexer.schema import CollectionSchema, Key, PointRecord, StoredPoint, StoreInfo, dense_vector


class StoreError(Exception):
    """A store operation failed."""


class BundleMismatchError(StoreError):
    """The collection holds vectors from another embedding space than the one in use."""

    def __init__(self, where: str, stored: str, requested: str) -> None:
        super().__init__(
            f"{where} holds vectors from bundle {stored}, but bundle {requested} was requested. "
            "Vectors from different bundles are not comparable: load the bundle that built this "
            "index, rebuild it under this bundle (`mmsearch reindex --bundle ...`), or use a new "
            "data directory / collection and re-ingest."
        )
        self.stored = stored
        self.requested = requested


class StoreLockedError(StoreError):
    """An embedded store directory is already open in another process."""


class VectorStore(Protocol):
    """One collection of points in one embedding space.

    The adapters subclass it to inherit `query`, `recommend` and `fuse`, which only build a
    plan (indexer.query_plan) for the one query method each adapter implements, `query_batch`."""

    kind: str
    schema: CollectionSchema

    def upsert(self, points: Sequence[PointRecord]) -> None:
        """Write points; raises StoreError for a vector of the wrong shape before writing any."""
        ...

    def query_batch(self, plans: Sequence[QueryPlan]) -> list[list[StoredPoint]]:
        """Answer every plan, in one round trip where the engine allows; one list per plan, best
        first. The adapters implement this one query method; the others build a plan for it."""
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
        plan = DenseQuery(
            vector,
            limit,
            filter=filter,
            score_threshold=score_threshold,
            exclude_ids=tuple(exclude_ids),
            exact=exact,
            frames_prefetch=frames_prefetch,
            stages=stages,
        )
        return self.query_batch([plan])[0]

    def recommend(
        self,
        positives: Sequence[np.ndarray],
        negatives: Sequence[np.ndarray],
        *,
        limit: int,
        strategy: Strategy = "best_score",
        filter: FilterSpec | None = None,
        exclude_ids: Sequence[str] = (),
    ) -> list[StoredPoint]:
        """Qdrant's recommend: close to the positives and away from the negatives."""
        plan = RecommendQuery(
            tuple(positives),
            tuple(negatives),
            limit,
            strategy=strategy,
            filter=filter,
            exclude_ids=tuple(exclude_ids),
        )
        return self.query_batch([plan])[0]

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
        plan = FusionQuery(
            tuple(vectors),
            tuple(weights),
            limit,
            per_query=per_query,
            filter=filter,
            exclude_ids=tuple(exclude_ids),
        )
        return self.query_batch([plan])[0]

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

    def create_field_index(self, key: str, kind: str) -> None:
        """Index the payload field `key` (a dotted path such as ``meta.year``) as `kind`:
        keyword, integer, float, bool or text, so filters on it stay fast. Idempotent."""
        raise StoreError(f"the {self.kind} store cannot index payload fields")

    def field_indexes(self) -> dict[str, str]:
        """The payload fields with an index, and their kinds (as create_field_index takes them)."""
        return {}

    def info(self) -> StoreInfo:
        """Point counts, in all and per modality."""
        by_modality = {
            m.value: self.count(FilterSpec(must=(Match(Key.MODALITY, m.value),))) for m in Modality
        }
        return StoreInfo(points=self.count(), schema=self.schema, kind=self.kind, by_modality=by_modality)

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


def stored_point(record: Any) -> StoredPoint:
    """A point from either engine's record or scored point: both name the fields alike, and the
    score or vector is None where the call did not ask for it."""
    score = getattr(record, "score", None)
    vector = dense_vector(getattr(record, "vector", None))
    return StoredPoint(str(record.id), dict(record.payload or {}), float(score or 0.0), vector)

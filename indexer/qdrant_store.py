"""The server/cluster store: qdrant-client against a Qdrant server (gRPC preferred).

``url=":memory:"`` runs qdrant-client's in-process mode, which the tests use: same client API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from qdrant_client import QdrantClient, models

from encoders.modality import Modality
from indexer.filters import FilterSpec, Match, MatchAny, Range
from indexer.schema import (
    DENSE,
    FRAMES,
    KEYWORD_INDEXES,
    CollectionSchema,
    PointRecord,
    StoredPoint,
    StoreInfo,
    dense_vector,
    named_vectors,
)
from indexer.store import RRF_K, BundleMismatchError, Stages, check_shapes


class QdrantStore:
    """A VectorStore over one collection of a Qdrant server or cluster."""

    kind = "qdrant"

    def __init__(
        self,
        url: str,
        schema: CollectionSchema,
        *,
        api_key: str | None = None,
        hnsw_ef: int = 128,
        shard_number: int | None = None,
        replication_factor: int | None = None,
        write_consistency_factor: int | None = None,
        timeout: int = 30,
        client: QdrantClient | None = None,
    ) -> None:
        if client is not None:  # a caller-owned client (shared connection pool, tests)
            self._client = client
        elif url == ":memory:":
            self._client = QdrantClient(location=":memory:")
        else:
            self._client = QdrantClient(url=url, api_key=api_key, prefer_grpc=True, timeout=timeout)
        self.url = url
        # In-process mode always searches exactly and warns when given HNSW search params.
        self._in_process = url == ":memory:"
        self.hnsw_ef = hnsw_ef
        self.schema = schema
        name = schema.name
        if self._client.collection_exists(name):
            meta = self._client.get_collection(name).config.metadata or {}
            stored = str(meta.get("bundle_id"))
            if stored != schema.bundle_id:
                raise BundleMismatchError(f"collection {name!r} at {url}", stored, schema.bundle_id)
        else:
            self._client.create_collection(
                name,
                vectors_config={
                    DENSE: models.VectorParams(
                        size=schema.dim,
                        distance=models.Distance.COSINE,
                        # int8 scalar quantization, kept in RAM: a quantized first pass is a query option.
                        quantization_config=models.ScalarQuantization(
                            scalar=models.ScalarQuantizationConfig(
                                type=models.ScalarType.INT8, quantile=0.99, always_ram=True
                            )
                        ),
                    ),
                    FRAMES: models.VectorParams(
                        size=schema.dim,
                        distance=models.Distance.COSINE,
                        multivector_config=models.MultiVectorConfig(
                            comparator=models.MultiVectorComparator.MAX_SIM
                        ),
                        # Frames only re-score a prefetched candidate set: no graph to build (m=0).
                        hnsw_config=models.HnswConfigDiff(m=0),
                    ),
                },
                hnsw_config=models.HnswConfigDiff(m=16, ef_construct=128),
                shard_number=shard_number,
                replication_factor=replication_factor,
                write_consistency_factor=write_consistency_factor,
                metadata=schema.to_metadata(),
            )
            if not self._in_process:  # in-process mode ignores payload indexes and warns about them
                for key in KEYWORD_INDEXES:
                    self._client.create_payload_index(name, key, models.PayloadSchemaType.KEYWORD)

    def upsert(self, points: Sequence[PointRecord]) -> None:
        if not points:
            return
        check_shapes(points, self.schema.dim)
        self._client.upsert(
            self.schema.name,
            points=[models.PointStruct(id=p.id, vector=named_vectors(p), payload=p.payload) for p in points],
            wait=True,
        )

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self._client.delete(
                self.schema.name, points_selector=models.PointIdsList(points=list(ids)), wait=True
            )

    def optimize(self) -> None:
        # The server's optimizers run in the background on their own; nothing to trigger.
        return None

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
        q = vector.astype(np.float32).tolist()
        quantized = stages is not None and stages.quantized
        params = self._params(exact=exact, hnsw_ef=self.hnsw_ef, ignore_quantization=not quantized)
        qfilter = _qdrant_filter(filter, exclude_ids)
        if frames_prefetch:
            prefetch = models.Prefetch(
                query=q, using=DENSE, limit=frames_prefetch, filter=qfilter, params=params
            )
            return self._run(
                prefetch=prefetch, query=[q], using=FRAMES, limit=limit, score_threshold=score_threshold
            )
        if stages is not None and stages.multi_stage:
            n = stages.candidates(limit)
            prefetch = models.Prefetch(query=q, using=DENSE, limit=n, filter=qfilter, params=params)
            outer: Any = q
            if stages.mmr_lambda is not None:
                # Qdrant's diversity is the complement of MMR's lambda.
                outer = models.NearestQuery(
                    nearest=q, mmr=models.Mmr(diversity=1 - stages.mmr_lambda, candidates_limit=n)
                )
            return self._run(
                prefetch=prefetch,
                query=outer,
                using=DENSE,
                limit=limit,
                score_threshold=score_threshold,
                search_params=self._params(ignore_quantization=stages.exact_rescore),
            )
        return self._run(
            query=q,
            using=DENSE,
            limit=limit,
            query_filter=qfilter,
            score_threshold=score_threshold,
            search_params=params,
        )

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
        query = models.RecommendQuery(
            recommend=models.RecommendInput(
                positive=[v.astype(np.float32).tolist() for v in positives],
                negative=[v.astype(np.float32).tolist() for v in negatives],
                strategy=models.RecommendStrategy(strategy),
            )
        )
        return self._run(
            query=query,
            using=DENSE,
            limit=limit,
            query_filter=_qdrant_filter(filter, exclude_ids),
            search_params=self._params(hnsw_ef=self.hnsw_ef),
        )

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
        qfilter = _qdrant_filter(filter, exclude_ids)
        prefetch = [
            models.Prefetch(query=v.astype(np.float32).tolist(), using=DENSE, limit=per_query, filter=qfilter)
            for v in vectors
        ]
        query = models.RrfQuery(rrf=models.Rrf(k=RRF_K, weights=list(weights)))
        return self._run(prefetch=prefetch, query=query, limit=limit)

    def _params(
        self, *, exact: bool = False, hnsw_ef: int | None = None, ignore_quantization: bool = False
    ) -> models.SearchParams | None:
        if self._in_process:  # in-process mode always searches exactly and warns about params
            return None
        return models.SearchParams(
            hnsw_ef=hnsw_ef,
            exact=exact,
            quantization=models.QuantizationSearchParams(ignore=ignore_quantization),
        )

    def _run(self, **kwargs: Any) -> list[StoredPoint]:
        result = self._client.query_points(self.schema.name, with_payload=True, **kwargs)
        return [StoredPoint(str(p.id), dict(p.payload or {}), float(p.score)) for p in result.points]

    def get(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[StoredPoint]:
        if not ids:
            return []
        records = self._client.retrieve(
            self.schema.name, ids=list(ids), with_payload=True, with_vectors=with_vectors
        )
        return [StoredPoint(str(r.id), dict(r.payload or {}), vector=dense_vector(r.vector)) for r in records]

    def count(self, filter: FilterSpec | None = None) -> int:
        return int(
            self._client.count(self.schema.name, count_filter=_qdrant_filter(filter, ()), exact=True).count
        )

    def scroll(
        self, *, limit: int, offset: str | None = None, filter: FilterSpec | None = None
    ) -> tuple[list[StoredPoint], str | None]:
        records, next_offset = self._client.scroll(
            self.schema.name,
            scroll_filter=_qdrant_filter(filter, ()),
            limit=limit,
            offset=offset,
            with_payload=True,
        )
        points = [StoredPoint(str(r.id), dict(r.payload or {})) for r in records]
        return points, (str(next_offset) if next_offset is not None else None)

    def info(self) -> StoreInfo:
        by_modality = {m.value: self.count(FilterSpec(must=(Match("modality", m.value),))) for m in Modality}
        return StoreInfo(points=self.count(), schema=self.schema, kind=self.kind, by_modality=by_modality)

    def close(self) -> None:
        self._client.close()


def _condition(c: Match | MatchAny | Range) -> models.FieldCondition:
    if isinstance(c, Match):
        return models.FieldCondition(key=c.key, match=models.MatchValue(value=c.value))
    if isinstance(c, MatchAny):
        return models.FieldCondition(key=c.key, match=models.MatchAny(any=list(c.values)))
    return models.FieldCondition(key=c.key, range=models.Range(gt=c.gt, gte=c.gte, lt=c.lt, lte=c.lte))


def _qdrant_filter(spec: FilterSpec | None, exclude_ids: Sequence[str]) -> models.Filter | None:
    if (spec is None or spec.is_empty()) and not exclude_ids:
        return None
    spec = spec or FilterSpec()
    must_not: list[Any] = [_condition(c) for c in spec.must_not]
    if exclude_ids:
        must_not.append(models.HasIdCondition(has_id=list(exclude_ids)))
    return models.Filter(
        must=[_condition(c) for c in spec.must] or None,
        must_not=must_not or None,
        should=[_condition(c) for c in spec.should] or None,
    )

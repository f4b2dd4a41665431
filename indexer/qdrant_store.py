"""The server/cluster store: qdrant-client against a Qdrant server (gRPC preferred).

``url=":memory:"`` runs qdrant-client's in-process mode, which the tests use: same client API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from qdrant_client import QdrantClient, models

from indexer import query_plan as qp
from indexer.filters import FilterSpec, Range
from indexer.qdrant_aliases import live_collection
from indexer.schema import (
    DENSE,
    FRAMES,
    KEYWORD_INDEXES,
    CollectionSchema,
    Key,
    PointRecord,
    StoredPoint,
    named_vectors,
)
from indexer.store import BundleMismatchError, VectorStore, check_shapes, stored_point


class QdrantStore(VectorStore):
    """A VectorStore over one collection of a Qdrant server or cluster: the one the live alias
    of `schema.name` names (indexer.qdrant_aliases), else `schema.name` itself; or the physical
    collection `collection` when given."""

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
        collection: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        _check_cluster_settings(shard_number, replication_factor, write_consistency_factor)
        self._owns_client = client is None
        if client is not None:  # a caller-owned client (shared connection pool, tests)
            self._client = client
        elif url == ":memory:":
            self._client = QdrantClient(location=":memory:")
        else:
            self._client = QdrantClient(url=url, api_key=api_key, prefer_grpc=True, timeout=timeout)
        self.url = url
        self._in_process = url == ":memory:"
        self._translator = _QdrantTranslator(self._in_process)
        self.hnsw_ef = hnsw_ef
        self.schema = schema
        # Resolved once: every call goes to the collection whose bundle was checked here.
        self.collection = name = collection or live_collection(self._client, schema.name)
        if self._client.collection_exists(name):
            meta = self._client.get_collection(name).config.metadata or {}
            stored = str(meta.get("bundle_id"))
            if stored != schema.bundle_id:
                built_by = f" (built by bundle {meta['bundle']})" if meta.get("bundle") else ""
                raise BundleMismatchError(f"collection {name!r} at {url}{built_by}", stored, schema.bundle_id)
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
                metadata=schema.to_metadata() | dict(metadata or {}),
            )
            if not self._in_process:  # in-process mode ignores payload indexes and warns about them
                for key in KEYWORD_INDEXES:
                    self._client.create_payload_index(name, key, _keyword_index(key))

    def upsert(self, points: Sequence[PointRecord]) -> None:
        if not points:
            return
        check_shapes(points, self.schema.dim)
        self._client.upsert(
            self.collection,
            points=[models.PointStruct(id=p.id, vector=named_vectors(p), payload=p.payload) for p in points],
            wait=True,
        )

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self._client.delete(
                self.collection, points_selector=models.PointIdsList(points=list(ids)), wait=True
            )

    def optimize(self) -> None:
        # The server's optimizers run in the background on their own; nothing to trigger.
        return None

    def create_field_index(self, key: str, kind: str) -> None:
        schema = models.PayloadSchemaType(kind)  # ValueError names an unknown type
        if not self._in_process:  # in-process mode ignores payload indexes and warns about them
            self._client.create_payload_index(self.collection, key, schema, wait=True)

    def field_indexes(self) -> dict[str, str]:
        schema = self._client.get_collection(self.collection).payload_schema or {}
        return {key: str(models.PayloadSchemaType(info.data_type).value) for key, info in schema.items()}

    def query_batch(self, plans: Sequence[qp.QueryPlan]) -> list[list[StoredPoint]]:
        if not plans:
            return []
        requests = [qp.translate(qp.stage_tree(p, hnsw_ef=self.hnsw_ef), self._translator) for p in plans]
        # One round trip for the whole batch.
        responses = self._client.query_batch_points(self.collection, requests=requests)
        return [[stored_point(p) for p in r.points] for r in responses]

    def get(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[StoredPoint]:
        if not ids:
            return []
        records = self._client.retrieve(
            self.collection, ids=list(ids), with_payload=True, with_vectors=with_vectors
        )
        return [stored_point(r) for r in records]

    def count(self, filter: FilterSpec | None = None) -> int:
        return int(self._client.count(self.collection, count_filter=_filter(filter), exact=True).count)

    def scroll(
        self, *, limit: int, offset: str | None = None, filter: FilterSpec | None = None
    ) -> tuple[list[StoredPoint], str | None]:
        records, next_offset = self._client.scroll(
            self.collection,
            scroll_filter=_filter(filter),
            limit=limit,
            offset=offset,
            with_payload=True,
        )
        points = [stored_point(r) for r in records]
        return points, (str(next_offset) if next_offset is not None else None)

    @property
    def client(self) -> QdrantClient:
        return self._client

    def close(self) -> None:
        if self._owns_client:  # a caller's client stays open for its other users
            self._client.close()


def _check_cluster_settings(
    shard_number: int | None, replication_factor: int | None, write_consistency_factor: int | None
) -> None:
    """Refuse impossible cluster settings here, with their names, rather than as a server error."""
    named = {
        "shard_number (MMSEARCH_QDRANT_SHARDS)": shard_number,
        "replication_factor (MMSEARCH_QDRANT_REPLICATION)": replication_factor,
        "write_consistency_factor (MMSEARCH_QDRANT_WRITE_CONSISTENCY)": write_consistency_factor,
    }
    for name, value in named.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if write_consistency_factor is not None and write_consistency_factor > (replication_factor or 1):
        raise ValueError(
            f"write_consistency_factor {write_consistency_factor} exceeds the replication_factor "
            f"{replication_factor or 1}: a write cannot be acknowledged by more replicas than exist"
        )


def _keyword_index(key: str) -> models.PayloadSchemaType | models.KeywordIndexParams:
    # The tenant index is a tenant index: Qdrant keeps each tenant's points together on disk
    # and plans a tenant's filtered searches by it.
    if key == Key.TENANT:
        return models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
    return models.PayloadSchemaType.KEYWORD


def _filter(spec: FilterSpec | None) -> models.Filter | None:
    qdrant_filter: models.Filter | None = qp.translate_filter(qp.point_filter(spec), _QdrantTranslator(False))
    return qdrant_filter


class _QdrantTranslator:
    """The neutral query nodes as qdrant-client models (see indexer.query_plan)."""

    def __init__(self, in_process: bool) -> None:
        # In-process mode always searches exactly and warns when given search params.
        self.in_process = in_process

    def nearest(self, node: qp.Nearest) -> models.NearestQuery:
        return models.NearestQuery(nearest=node.vector)

    def mmr(self, node: qp.Mmr) -> models.NearestQuery:
        # Qdrant's diversity is the complement of MMR's lambda.
        mmr = models.Mmr(diversity=1 - node.lambda_, candidates_limit=node.candidates)
        return models.NearestQuery(nearest=node.vector, mmr=mmr)

    def recommend(self, node: qp.Recommend) -> models.RecommendQuery:
        strategy = models.RecommendStrategy(node.strategy)
        rec = models.RecommendInput(
            positive=list(node.positives), negative=list(node.negatives), strategy=strategy
        )
        return models.RecommendQuery(recommend=rec)

    def rrf(self, node: qp.Rrf) -> models.RrfQuery:
        return models.RrfQuery(rrf=models.Rrf(k=node.k, weights=node.weights))

    def match(self, key: str, value: str | int | bool) -> models.FieldCondition:
        return models.FieldCondition(key=key, match=models.MatchValue(value=value))

    def match_any(self, key: str, values: tuple[str, ...]) -> models.FieldCondition:
        return models.FieldCondition(key=key, match=models.MatchAny(any=list(values)))

    def range(self, cond: Range) -> models.FieldCondition:
        bounds = models.Range(gt=cond.gt, gte=cond.gte, lt=cond.lt, lte=cond.lte)
        return models.FieldCondition(key=cond.key, range=bounds)

    def has_id(self, ids: tuple[str, ...]) -> models.HasIdCondition:
        return models.HasIdCondition(has_id=list(ids))

    def is_empty(self, key: str) -> models.IsEmptyCondition:
        return models.IsEmptyCondition(is_empty=models.PayloadField(key=key))

    def filter(
        self, must: list[Any] | None, must_not: list[Any] | None, should: list[Any] | None
    ) -> models.Filter:
        return models.Filter(must=must, must_not=must_not, should=should)

    def params(self, params: qp.Params) -> models.SearchParams | None:
        if self.in_process:
            return None
        quantization = models.QuantizationSearchParams(ignore=params.ignore_quantization)
        return models.SearchParams(hnsw_ef=params.hnsw_ef, exact=params.exact, quantization=quantization)

    def prefetch(self, stage: qp.Stage, parts: qp.Parts) -> models.Prefetch:
        return models.Prefetch(**self._fields(stage, parts))

    def request(self, stage: qp.Stage, parts: qp.Parts) -> models.QueryRequest:
        return models.QueryRequest(**self._fields(stage, parts), with_payload=True)

    def _fields(self, stage: qp.Stage, parts: qp.Parts) -> dict[str, Any]:
        # Prefetch and QueryRequest share these fields; `using` sits beside the query here, where
        # qdrant-edge-py puts it inside.
        using = None if isinstance(stage.scoring, qp.Rrf) else stage.scoring.using
        return {
            "query": parts.query,
            "using": using,
            "limit": stage.limit,
            "filter": parts.filter,
            "params": parts.params,
            "score_threshold": stage.score_threshold,
            "prefetch": parts.prefetch,
        }

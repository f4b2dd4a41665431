"""The embedded default store: the Qdrant engine in-process (qdrant-edge-py), one directory."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import qdrant_edge as qe

from indexer import query_plan as qp
from indexer.edge_layout import LayoutError, collection_dir, live_collection
from indexer.filters import FilterSpec, Range
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
from indexer.store import (
    BundleMismatchError,
    StoreError,
    StoreLockedError,
    VectorStore,
    check_shapes,
    stored_point,
)

SCHEMA_FILE = "mmsearch.json"
SHARD_DIR = "shard"
LOCK_FILE = ".lock"


class EdgeStore(VectorStore):
    """A VectorStore over one Qdrant Edge shard: the live collection of the data directory
    `path`, or the one named by `collection` (indexer.edge_layout).

    One process owns a collection (an exclusive lock on its `.lock`); a second opener gets
    StoreLockedError before touching any file.
    """

    kind = "edge"

    def __init__(
        self,
        path: str | Path,
        schema: CollectionSchema,
        *,
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 128,
        hnsw_ef: int = 128,
        collection: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = Path(path)
        try:
            self.collection = live_collection(self.root) if collection is None else collection
        except LayoutError as exc:
            raise StoreError(str(exc)) from None
        self.path = collection_dir(self.root, self.collection)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._acquire_lock()
        try:
            self.schema = self._check_schema(schema)
            self.hnsw_ef = hnsw_ef
            # int8 scalar quantization, kept in RAM: a quantized first pass is a query option.
            dense = qe.EdgeVectorParams(
                size=schema.dim,
                distance=qe.Distance.Cosine,
                quantization_config=qe.ScalarQuantizationConfig(
                    qe.ScalarType.Int8, quantile=0.99, always_ram=True
                ),
            )
            frames = qe.EdgeVectorParams(
                size=schema.dim,
                distance=qe.Distance.Cosine,
                multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
                # Frames only re-score a prefetched candidate set: no graph to build (m=0).
                hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
            )
            config = qe.EdgeConfig(
                vectors={
                    DENSE: dense,
                    FRAMES: frames,
                },
                hnsw_config=qe.HnswIndexConfig(
                    m=hnsw_m, ef_construct=hnsw_ef_construct, full_scan_threshold=10_000
                ),
            )
            shard_path = self.path / SHARD_DIR
            if (shard_path / "edge_config.json").exists():
                self._shard = qe.EdgeShard.load(str(shard_path))
            else:
                self._shard = qe.EdgeShard.create(str(shard_path), config)
                for key in KEYWORD_INDEXES:
                    self._shard.update(qe.UpdateOperation.create_field_index(key, _keyword_index(key)))
                meta = self.schema.to_metadata() | dict(metadata or {})
                (self.path / SCHEMA_FILE).write_text(json.dumps(meta, indent=2))
        except BaseException:
            self._release_lock()
            raise
        # The shard is thread-safe, but optimize() rebuilds segments: keep writes and index
        # builds from interleaving so a flush never sees a half-swapped segment set.
        self._write_lock = threading.Lock()
        self._closed = False

    def _acquire_lock(self) -> IO[str]:
        f = open(self.path / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the store's lifetime
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "unknown"
            f.close()
            raise StoreLockedError(
                f"embedded store {self.path} is already open in another process (pid {owner}). "
                "One process owns an embedded store: query that process over gRPC, stop it, "
                "or use another --data directory."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        return f

    def _release_lock(self) -> None:
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()

    def _check_schema(self, schema: CollectionSchema) -> CollectionSchema:
        meta_path = self.path / SCHEMA_FILE
        if not meta_path.exists():
            if (self.path / SHARD_DIR).exists():
                raise StoreError(
                    f"{self.path} has a shard but no {SCHEMA_FILE}; it was not written by mmsearch"
                )
            return schema
        meta = json.loads(meta_path.read_text())
        if meta.get("bundle_id") != schema.bundle_id:
            built_by = f" (built by bundle {meta['bundle']})" if meta.get("bundle") else ""
            raise BundleMismatchError(
                f"embedded store {self.path}{built_by}", str(meta.get("bundle_id")), schema.bundle_id
            )
        if int(meta.get("dim", -1)) != schema.dim:
            raise StoreError(
                f"embedded store {self.path} has dimension {meta.get('dim')}, bundle has {schema.dim}"
            )
        return schema

    # -- writes ---------------------------------------------------------------------------

    def upsert(self, points: Sequence[PointRecord]) -> None:
        if not points:
            return
        check_shapes(points, self.schema.dim)
        ops = [qe.Point(p.id, named_vectors(p), p.payload) for p in points]
        # No flush per write: the shard's write-ahead log already makes each update durable, and
        # a flush (segments to disk) costs ~0.2 s. close() and optimize() flush.
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.upsert_points(ops))

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.delete_points(list(ids)))

    def optimize(self) -> None:
        with self._write_lock:
            self._shard.optimize()
            self._shard.flush()

    def create_field_index(self, key: str, kind: str) -> None:
        if kind not in _FIELD_TYPES:
            raise ValueError(f"payload index type {kind!r}: one of {', '.join(_FIELD_TYPES)}")
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.create_field_index(key, _FIELD_TYPES[kind]))

    def field_indexes(self) -> dict[str, str]:
        kinds = {v: k for k, v in _FIELD_TYPES.items()}
        schema = self._shard.info().payload_schema
        return {key: kinds.get(info.data_type, "keyword") for key, info in schema.items()}

    # -- reads ----------------------------------------------------------------------------

    def query_batch(self, plans: Sequence[qp.QueryPlan]) -> list[list[StoredPoint]]:
        if not plans:
            return []
        # One planned batch: the shard shares one pass over its segments among the requests.
        requests = [qp.translate(qp.stage_tree(p, hnsw_ef=self.hnsw_ef), _TRANSLATOR) for p in plans]
        results = self._shard.query_batch(qe.QueryBatchRequest(requests))
        return [[stored_point(r) for r in rs] for rs in results]

    def get(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[StoredPoint]:
        if not ids:
            return []
        records = self._shard.retrieve(list(ids), with_payload=True, with_vector=with_vectors)
        return [stored_point(r) for r in records]

    def count(self, filter: FilterSpec | None = None) -> int:
        return int(self._shard.count(qe.CountRequest(exact=True, filter=_filter(filter))))

    def scroll(
        self, *, limit: int, offset: str | None = None, filter: FilterSpec | None = None
    ) -> tuple[list[StoredPoint], str | None]:
        records, next_offset = self._shard.scroll(
            qe.ScrollRequest(offset=offset, limit=limit, filter=_filter(filter), with_payload=True)
        )
        points = [stored_point(r) for r in records]
        return points, (str(next_offset) if next_offset is not None else None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._write_lock:
            self._shard.flush()
            self._shard.close()
        self._release_lock()


def _keyword_index(key: str) -> qe.PayloadSchemaType | qe.KeywordIndexParams:
    # The tenant index is a tenant index: the engine keeps each tenant's points together.
    if key == Key.TENANT:
        return qe.KeywordIndexParams(is_tenant=True)
    return qe.PayloadSchemaType.Keyword


_FIELD_TYPES = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
    "text": qe.PayloadSchemaType.Text,
}


def _filter(spec: FilterSpec | None) -> qe.Filter | None:
    edge_filter: qe.Filter | None = qp.translate_filter(qp.point_filter(spec), _TRANSLATOR)
    return edge_filter


class _EdgeTranslator:
    """The neutral query nodes as qdrant-edge-py objects (see indexer.query_plan)."""

    def nearest(self, node: qp.Nearest) -> qe.Query:
        return qe.Query.Nearest(node.vector, using=node.using)

    def mmr(self, node: qp.Mmr) -> qe.Mmr:
        return qe.Mmr(node.vector, lambda_=node.lambda_, candidates_limit=node.candidates, using=node.using)

    def recommend(self, node: qp.Recommend) -> qe.Query:
        rq = qe.RecommendQuery(list(node.positives), list(node.negatives))
        if node.strategy == "best_score":
            return qe.Query.RecommendBestScore(rq, using=node.using)
        return qe.Query.RecommendSumScores(rq, using=node.using)

    def rrf(self, node: qp.Rrf) -> qe.Fusion.Rrf:
        return qe.Fusion.Rrf(k=node.k, weights=node.weights)

    def match(self, key: str, value: str | int | bool) -> qe.FieldCondition:
        # qdrant-edge-py 0.9 reads a Python bool as the integer 0/1, which never matches a JSON
        # boolean; numpy's bool_ is not an int subclass, so it arrives as a real boolean.
        edge_value = np.bool_(value) if isinstance(value, bool) else value
        return qe.FieldCondition(key=key, match=qe.MatchValue(edge_value))  # type: ignore[arg-type]

    def match_any(self, key: str, values: tuple[str, ...]) -> qe.FieldCondition:
        return qe.FieldCondition(key=key, match=qe.MatchAny(list(values)))

    def range(self, cond: Range) -> qe.FieldCondition:
        return qe.FieldCondition(
            key=cond.key, range=qe.RangeFloat(gt=cond.gt, gte=cond.gte, lt=cond.lt, lte=cond.lte)
        )

    def has_id(self, ids: tuple[str, ...]) -> qe.HasIdCondition:
        return qe.HasIdCondition(set(ids))

    def is_empty(self, key: str) -> qe.IsEmptyCondition:
        return qe.IsEmptyCondition(key)

    def filter(
        self, must: list[Any] | None, must_not: list[Any] | None, should: list[Any] | None
    ) -> qe.Filter:
        return qe.Filter(must=must, must_not=must_not, should=should)

    def params(self, params: qp.Params) -> qe.SearchParams:
        quantization = qe.QuantizationSearchParams(ignore=params.ignore_quantization)
        return qe.SearchParams(hnsw_ef=params.hnsw_ef, exact=params.exact, quantization=quantization)

    def prefetch(self, stage: qp.Stage, parts: qp.Parts) -> qe.Prefetch:
        return qe.Prefetch(
            stage.limit, parts.query, parts.prefetch, parts.params, parts.filter, stage.score_threshold
        )

    def request(self, stage: qp.Stage, parts: qp.Parts) -> qe.QueryRequest:
        return qe.QueryRequest(
            limit=stage.limit,
            query=parts.query,
            prefetches=parts.prefetch,
            with_payload=True,
            filter=parts.filter,
            score_threshold=stage.score_threshold,
            params=parts.params,
        )


_TRANSLATOR = _EdgeTranslator()

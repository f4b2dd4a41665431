"""The embedded default store: the Qdrant engine in-process (qdrant-edge-py), one directory."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import qdrant_edge as qe

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
from indexer.store import RRF_K, BundleMismatchError, Stages, StoreError, StoreLockedError, check_shapes

SCHEMA_FILE = "mmsearch.json"
SHARD_DIR = "shard"
LOCK_FILE = ".lock"


class EdgeStore:
    """A VectorStore over one Qdrant Edge shard in `path`.

    One process owns the directory (an exclusive lock on `path/.lock`); a second opener gets
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
    ) -> None:
        self.path = Path(path)
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
                    self._shard.update(
                        qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword)
                    )
                (self.path / SCHEMA_FILE).write_text(json.dumps(self.schema.to_metadata(), indent=2))
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
            raise BundleMismatchError(
                f"embedded store {self.path}", str(meta.get("bundle_id")), schema.bundle_id
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

    # -- reads ----------------------------------------------------------------------------

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
        params = qe.SearchParams(
            hnsw_ef=self.hnsw_ef, exact=exact, quantization=qe.QuantizationSearchParams(ignore=not quantized)
        )
        edge_filter = _edge_filter(filter, exclude_ids)
        if frames_prefetch:
            prefetch = qe.Prefetch(
                limit=frames_prefetch,
                query=qe.Query.Nearest(q, using=DENSE),
                filter=edge_filter,
                params=params,
            )
            request = qe.QueryRequest(
                limit=limit,
                prefetches=[prefetch],
                query=qe.Query.Nearest([q], using=FRAMES),
                with_payload=True,
                score_threshold=score_threshold,
            )
        elif stages is not None and stages.multi_stage:
            n = stages.candidates(limit)
            prefetch = qe.Prefetch(
                limit=n, query=qe.Query.Nearest(q, using=DENSE), filter=edge_filter, params=params
            )
            outer: Any = qe.Query.Nearest(q, using=DENSE)
            if stages.mmr_lambda is not None:
                outer = qe.Mmr(q, lambda_=stages.mmr_lambda, candidates_limit=n, using=DENSE)
            request = qe.QueryRequest(
                limit=limit,
                prefetches=[prefetch],
                query=outer,
                with_payload=True,
                score_threshold=score_threshold,
                # The re-scoring stage reads the full float vectors unless told to stay quantized.
                params=qe.SearchParams(quantization=qe.QuantizationSearchParams(ignore=stages.exact_rescore)),
            )
        else:
            request = qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(q, using=DENSE),
                filter=edge_filter,
                with_payload=True,
                score_threshold=score_threshold,
                params=params,
            )
        return self._run(request)

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
        rq = qe.RecommendQuery([_list(v) for v in positives], [_list(v) for v in negatives])
        query = (qe.Query.RecommendBestScore if strategy == "best_score" else qe.Query.RecommendSumScores)(
            rq, using=DENSE
        )
        request = qe.QueryRequest(
            limit=limit,
            query=query,
            filter=_edge_filter(filter, exclude_ids),
            with_payload=True,
            params=qe.SearchParams(hnsw_ef=self.hnsw_ef),
        )
        return self._run(request)

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
        edge_filter = _edge_filter(filter, exclude_ids)
        prefetches = [
            qe.Prefetch(limit=per_query, query=qe.Query.Nearest(_list(v), using=DENSE), filter=edge_filter)
            for v in vectors
        ]
        request = qe.QueryRequest(
            limit=limit,
            prefetches=prefetches,
            query=qe.Fusion.Rrf(k=RRF_K, weights=list(weights)),  # type: ignore[arg-type]
            with_payload=True,
        )
        return self._run(request)

    def _run(self, request: qe.QueryRequest) -> list[StoredPoint]:
        return [
            StoredPoint(str(r.id), dict(r.payload or {}), float(r.score)) for r in self._shard.query(request)
        ]

    def get(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[StoredPoint]:
        if not ids:
            return []
        records = self._shard.retrieve(list(ids), with_payload=True, with_vector=with_vectors)
        return [StoredPoint(str(r.id), dict(r.payload or {}), vector=dense_vector(r.vector)) for r in records]

    def count(self, filter: FilterSpec | None = None) -> int:
        return int(self._shard.count(qe.CountRequest(exact=True, filter=_edge_filter(filter, ()))))

    def scroll(
        self, *, limit: int, offset: str | None = None, filter: FilterSpec | None = None
    ) -> tuple[list[StoredPoint], str | None]:
        records, next_offset = self._shard.scroll(
            qe.ScrollRequest(offset=offset, limit=limit, filter=_edge_filter(filter, ()), with_payload=True)
        )
        points = [StoredPoint(str(r.id), dict(r.payload or {})) for r in records]
        return points, (str(next_offset) if next_offset is not None else None)

    def info(self) -> StoreInfo:
        by_modality = {m.value: self.count(FilterSpec(must=(Match("modality", m.value),))) for m in Modality}
        return StoreInfo(points=self.count(), schema=self.schema, kind=self.kind, by_modality=by_modality)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._write_lock:
            self._shard.flush()
            self._shard.close()
        self._release_lock()


def _list(v: np.ndarray) -> list[float]:
    return [float(x) for x in v.astype(np.float32)]


def _edge_condition(c: Match | MatchAny | Range) -> qe.FieldCondition:
    if isinstance(c, Match):
        # qdrant-edge-py 0.9 reads a Python bool as the integer 0/1, which never matches a JSON
        # boolean; numpy's bool_ is not an int subclass, so it arrives as a real boolean.
        value = np.bool_(c.value) if isinstance(c.value, bool) else c.value
        return qe.FieldCondition(key=c.key, match=qe.MatchValue(value))  # type: ignore[arg-type]
    if isinstance(c, MatchAny):
        return qe.FieldCondition(key=c.key, match=qe.MatchAny(list(c.values)))
    return qe.FieldCondition(key=c.key, range=qe.RangeFloat(gt=c.gt, gte=c.gte, lt=c.lt, lte=c.lte))


def _edge_filter(spec: FilterSpec | None, exclude_ids: Sequence[str]) -> qe.Filter | None:
    if (spec is None or spec.is_empty()) and not exclude_ids:
        return None
    spec = spec or FilterSpec()
    must_not: list[Any] = [_edge_condition(c) for c in spec.must_not]
    if exclude_ids:
        must_not.append(qe.HasIdCondition(set(exclude_ids)))
    return qe.Filter(
        must=[_edge_condition(c) for c in spec.must] or None,
        must_not=must_not or None,
        should=[_edge_condition(c) for c in spec.should] or None,
    )

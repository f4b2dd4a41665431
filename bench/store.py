"""Benchmark the embedded EdgeStore against qdrant-client's in-process mode and exact numpy search.

Data: `--n` clustered `--dim`-d float32 vectors (`--centres` unit-norm gaussian centres; each point is a
centre plus gaussian noise, L2-normalised, like real embeddings) and `--queries` held-out queries drawn
the same way. The same points go into

  1. EdgeStore (Qdrant Edge in-process; upsert in batches, then optimize() builds the HNSW index),
  2. QdrantStore(":memory:") (qdrant-client local mode: brute force in python/numpy),
  3. exact numpy (dot product + argpartition) — the ground truth for recall@10.

Latencies are per single query, after warm-up, reported as medians in ms; `edge_batch_ms_per_query` is
the median time per query when `--query-batch` queries go to the shard in one `query_batch` call. Local mode is slow, so it is
timed on the first `--local-queries` queries only. Prints one JSON object on stdout; progress goes to
stderr.

Run from the repo root:

    .venv/bin/python bench/store.py               # full run: 100k points, 200 queries
    .venv/bin/python bench/store.py --n 5000      # quick run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from indexer.edge_store import EdgeStore
from indexer.qdrant_store import QdrantStore
from indexer.query_plan import DenseQuery
from indexer.schema import CollectionSchema, PointRecord, StoredPoint

K = 10
# Held-out queries run untimed before timing. The shard's files are freshly written mmaps: the first
# few hundred queries after optimize() still fault pages in (p50 ~1.5 ms vs ~1.1 ms warm at 100k), so
# warm with many distinct queries, not the timed ones, to measure a running store on unseen queries.
WARMUP = 500
LOCAL_WARMUP = 5  # local mode is brute force in numpy: nothing to warm, and each query is ~150 ms
PAYLOAD = {"modality": "image"}


@dataclass
class Timed:
    """Top-k result indices per query (rows) and per-query latencies in ms."""

    hits: np.ndarray
    latencies_ms: list[float]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="indexed points")
    p.add_argument("--queries", type=int, default=200, help="held-out queries")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument(
        "--centres", type=int, default=None, help="cluster centres (default: n / 33, so 3000 at 100k points)"
    )
    p.add_argument("--noise", type=float, default=0.05, help="per-dimension std of the noise around a centre")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--m", type=int, default=16, help="HNSW m")
    p.add_argument("--ef-construct", type=int, default=128, help="HNSW ef_construct")
    p.add_argument("--hnsw-ef", type=int, default=64, help="HNSW ef at query time")
    p.add_argument("--batch", type=int, default=2000, help="points per upsert call")
    p.add_argument("--query-batch", type=int, default=16, help="queries per query_batch call")
    p.add_argument("--local-queries", type=int, default=50, help="queries timed on qdrant-client local mode")
    p.add_argument("--skip-local", action="store_true", help="skip qdrant-client local mode (for tuning)")
    args = p.parse_args(argv)
    # Keep ~33 points per cluster whatever --n is, so a quick run has the same neighbourhood shape.
    if args.centres is None:
        args.centres = max(1, round(args.n * 3 / 100))
    return args


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@dataclass
class Data:
    base: np.ndarray
    queries: np.ndarray
    warmup: np.ndarray


def make_data(n: int, queries: int, dim: int, centres: int, noise: float, seed: int) -> Data:
    """Index points, held-out queries and warm-up queries: unit-norm float32, one cluster mixture."""
    rng = np.random.default_rng(seed)
    c = normalise(rng.standard_normal((centres, dim)))
    total = n + queries + WARMUP
    x = c[rng.integers(0, centres, total)] + noise * rng.standard_normal((total, dim), dtype=np.float32)
    x = normalise(x)
    return Data(base=x[:n], queries=x[n : n + queries], warmup=x[n + queries :])


def point_ids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1)) for i in range(n)]


def time_queries(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, warmup: np.ndarray
) -> Timed:
    """Run the warm-up queries untimed, then time `queries` one at a time."""
    for q in warmup:
        search(q)
    hits = np.full((len(queries), K), -1, dtype=np.int64)
    latencies: list[float] = []
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        found = search(q)
        latencies.append((time.perf_counter() - t0) * 1000)
        hits[i, : len(found)] = found
    return Timed(hits, latencies)


def exact_search(base: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def search(q: np.ndarray) -> np.ndarray:
        scores = base @ q
        top = np.argpartition(scores, -K)[-K:]
        return top[np.argsort(-scores[top])]

    return search


def store_search(
    query: Callable[..., list[StoredPoint]], index_of: dict[str, int]
) -> Callable[[np.ndarray], np.ndarray]:
    def search(q: np.ndarray) -> np.ndarray:
        return np.array([index_of[p.id] for p in query(q, limit=K)], dtype=np.int64)

    return search


def time_batches(store: EdgeStore, queries: np.ndarray, size: int, index_of: dict[str, int]) -> Timed:
    """Queries `size` at a time through one query_batch call; latencies are per query."""
    hits = np.full((len(queries), K), -1, dtype=np.int64)
    latencies: list[float] = []
    for start in range(0, len(queries), size):
        chunk = queries[start : start + size]
        t0 = time.perf_counter()
        results = store.query_batch([DenseQuery(q, K) for q in chunk])
        latencies.append((time.perf_counter() - t0) * 1000 / len(chunk))
        for i, found in enumerate(results, start):
            hits[i, : len(found)] = [index_of[p.id] for p in found]
    return Timed(hits, latencies)


def recall_at_k(hits: np.ndarray, truth: np.ndarray) -> float:
    overlaps = [len(set(h.tolist()) & set(t.tolist())) / K for h, t in zip(hits, truth, strict=True)]
    return float(np.mean(overlaps))


def fill(store: EdgeStore | QdrantStore, base: np.ndarray, ids: list[str], batch: int) -> None:
    for start in range(0, len(ids), batch):
        end = min(start + batch, len(ids))
        store.upsert([PointRecord(ids[i], base[i], dict(PAYLOAD)) for i in range(start, end)])


def bench_edge(data: Data, ids: list[str], args: argparse.Namespace) -> tuple[Timed, dict[str, float | int]]:
    index_of = {pid: i for i, pid in enumerate(ids)}
    schema = CollectionSchema(bundle_id="bench", dim=args.dim)
    with tempfile.TemporaryDirectory(prefix="mmsearch-bench-") as tmp:
        store = EdgeStore(
            tmp, schema, hnsw_m=args.m, hnsw_ef_construct=args.ef_construct, hnsw_ef=args.hnsw_ef
        )
        try:
            t0 = time.perf_counter()
            fill(store, data.base, ids, args.batch)
            upsert_s = time.perf_counter() - t0
            log(f"edge: upserted {len(ids)} in {upsert_s:.1f}s; optimizing (builds HNSW)")
            store.optimize()
            build_s = time.perf_counter() - t0
            info = store._shard.info()
            log(
                f"edge: built in {build_s:.1f}s, {info.indexed_vectors_count} indexed vectors, "
                f"{info.segments_count} segments"
            )
            timed = time_queries(store_search(store.query, index_of), data.queries, data.warmup)
            batched = time_batches(store, data.queries, args.query_batch, index_of)
        finally:
            store.close()
    stats: dict[str, float | int] = {
        "edge_upsert_s": round(upsert_s, 2),
        "edge_build_s": round(build_s, 2),
        "edge_indexed_vectors": int(info.indexed_vectors_count),
        "edge_segments": int(info.segments_count),
        "edge_batch_ms_per_query": round(batched.p50_ms, 4),
        # The batch must answer exactly what the one-by-one queries answered.
        "edge_batch_same_hits": bool((batched.hits == timed.hits).all()),
    }
    return timed, stats


def bench_local(data: Data, ids: list[str], args: argparse.Namespace) -> tuple[Timed, float]:
    """qdrant-client local mode on the first `--local-queries` queries (it brute-forces in python)."""
    index_of = {pid: i for i, pid in enumerate(ids)}
    store = QdrantStore(":memory:", CollectionSchema(bundle_id="bench", dim=args.dim))
    try:
        t0 = time.perf_counter()
        fill(store, data.base, ids, args.batch)
        load_s = time.perf_counter() - t0
        log(f"local: upserted {len(ids)} in {load_s:.1f}s")
        queries = data.queries[: args.local_queries]
        timed = time_queries(store_search(store.query, index_of), queries, data.warmup[:LOCAL_WARMUP])
    finally:
        store.close()
    return timed, load_s


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Local mode warns that it ignores search_params and is meant for small collections: both known.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"qdrant_client\.|indexer\.qdrant_store")
    t_start = time.perf_counter()
    data = make_data(args.n, args.queries, args.dim, args.centres, args.noise, args.seed)
    ids = point_ids(args.n)
    log(f"data: {args.n} x {args.dim}, {args.queries} queries, {args.centres} centres, noise {args.noise}")

    exact = time_queries(exact_search(data.base), data.queries, data.warmup)
    log(f"exact: p50 {exact.p50_ms:.3f} ms")
    edge, edge_stats = bench_edge(data, ids, args)
    edge_recall = recall_at_k(edge.hits, exact.hits)
    log(f"edge: recall@10 {edge_recall:.4f}, p50 {edge.p50_ms:.3f} ms")

    result: dict[str, object] = {
        "n": args.n,
        "dim": args.dim,
        "centres": args.centres,
        "noise": args.noise,
        "seed": args.seed,
        "queries": args.queries,
        "warmup_queries": WARMUP,
        "hnsw_m": args.m,
        "hnsw_ef_construct": args.ef_construct,
        "hnsw_ef": args.hnsw_ef,
        **edge_stats,
        "edge_recall_at_10": round(edge_recall, 4),
        "edge_p50_ms": round(edge.p50_ms, 4),
        "edge_p90_ms": round(float(np.percentile(edge.latencies_ms, 90)), 4),
        "exact_p50_ms": round(exact.p50_ms, 4),
        "speedup_vs_exact": round(exact.p50_ms / edge.p50_ms, 2),
    }
    if not args.skip_local:
        local, local_load_s = bench_local(data, ids, args)
        log(f"local: p50 {local.p50_ms:.3f} ms")
        result |= {
            "local_queries": len(local.latencies_ms),
            "local_load_s": round(local_load_s, 2),
            "local_recall_at_10": round(recall_at_k(local.hits, exact.hits[: len(local.hits)]), 4),
            "local_p50_ms": round(local.p50_ms, 4),
            "speedup_vs_local": round(local.p50_ms / edge.p50_ms, 2),
        }
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

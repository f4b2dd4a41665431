"""Query throughput and latency over gRPC, beside the in-process ceiling, in one run.

For each model (`tiny`, and open_clip `ViT-B-32` with random weights, written once as a bundle
directory under bench/out/):

1. an embedded index of `--points` clustered unit vectors in the model's space (text points, as
   real embeddings cluster), written straight to the store and indexed (HNSW);
2. the in-process ceiling: the query service itself (encode + store query + grouping, no gRPC),
   one query at a time, with the server's engine settings (its torch threads: `torch_threads`):
   `inproc_p50_ms`, `inproc_qps`;
3. `mmsearch serve` on that index (default settings, Prometheus metrics on a free port), and a
   grpc.aio load generator on loopback at each `--concurrency` (closed loop: each worker sends
   its next query when the last one answers): `qps_cN`, `p50_ms_cN`, `p99_ms_cN`, and the
   server's mean micro-batch sizes (`mean_batch_cN`, from its metrics).

Each level gets at most `--seconds` and `--max-queries` in all, split over `--rounds` rounds that
interleave in-process and gRPC measurements (the in-process one on a copy of the index), so load
from elsewhere on the machine falls on all of them alike; figures are medians over rounds, p99s
are over all of a level's latencies.

Every query text is new (a counter in it), so the server's text-vector cache never answers and
every query is encoded. Goals (per model): p50_ms_c1 <= 1.3 x inproc_p50_ms and qps_c32 >=
inproc_qps; for ViT-B-32 also qps_c32 >= 2 x qps_c1 and >= 3 x inproc_qps.
Prints one JSON object (last line); progress goes to stderr.

    .venv/bin/python bench/query.py                        # full: 20,000 points, both models
    .venv/bin/python bench/query.py --points 2000 --seconds 4 --models tiny   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.hostile import sentence, wait_idle
from mmsearch.launch import LaunchedServer, launch_server
from mmsearch.v1 import search_pb2 as pb
from mmsearch.v1 import search_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
MODELS = {"tiny": "tiny", "ViT-B-32": "ViT-B-32"}  # bench name -> open_clip model ("tiny": the bundle)
TOP_K = 10
CENTRES = 200


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bundle_name(model: str) -> str:
    """A bundle name `mmsearch serve --bundle` takes: tiny, or a random-weight bundle directory."""
    if model == "tiny":
        return "tiny"
    import open_clip
    import torch
    from safetensors.torch import save_file

    root = OUT / f"bundle-{model}-random"
    if not (root / "open_clip_model.safetensors").is_file():
        root.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        net, _, _ = open_clip.create_model_and_transforms(model, pretrained=None)
        cfg = {
            "model_cfg": open_clip.get_model_config(model),
            "preprocess_cfg": open_clip.get_model_preprocess_cfg(net),
        }
        (root / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
        save_file(
            {k: v.contiguous() for k, v in net.state_dict().items()},
            str(root / "open_clip_model.safetensors"),
        )
    return str(root)


def build_index(data_dir: Path, bundle: str, points: int, seed: int) -> tuple[str, int]:
    """Write `points` clustered unit vectors as text points and build the HNSW index."""
    from encoders.bundle import load_bundle
    from indexer.edge_store import EdgeStore
    from indexer.schema import CollectionSchema, PointPayload, PointRecord, point_id

    b = load_bundle(bundle, "cpu")
    store = EdgeStore(data_dir, CollectionSchema(bundle_id=b.bundle_id, dim=b.embed_dim))
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, b.embed_dim)).astype(np.float32)
    try:
        for start in range(0, points, 1000):
            n = min(1000, points - start)
            v = centres[rng.integers(0, CENTRES, n)] + 0.5 * rng.standard_normal((n, b.embed_dim))
            v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
            records = []
            for i, vec in enumerate(v):
                key = f"bench-{start + i}"
                payload = PointPayload(
                    modality="text",
                    source=key,
                    content_hash=key,
                    media_id=key,
                    bundle_id=b.bundle_id,
                    text=key,
                )
                records.append(PointRecord(point_id(key), vec, payload.to_dict()))
            store.upsert(records)
        store.optimize()
    finally:
        store.close()
    return b.bundle_id, b.embed_dim


class InProcess:
    """The query service in this process over a copy of the index (the server owns the
    original), one query at a time: the ceiling without gRPC."""

    def __init__(self, data_dir: Path, bundle: str, rng: random.Random, torch_threads: int) -> None:
        from server.app import use_torch_threads
        from server.config import ServerConfig
        from server.context import background
        from server.services import build_services

        # The engine as the server builds and runs it (server.app, server.services): the same
        # torch threads, the same services over the same settings; only the cache is off.
        self.torch_threads = use_torch_threads(torch_threads)
        config = ServerConfig(data_dir=data_dir, bundle=bundle, device="cpu", text_cache_size=0)
        self.services = build_services(config)
        self.ctx = background()
        self.rng = rng
        self.count = 0
        self.measure(60.0, 20)  # warm-up: first calls allocate and fault pages in

    def measure(self, seconds: float, max_queries: int) -> list[float]:
        from server.planner import SearchParams
        from server.query_types import QueryInput

        ms: list[float] = []
        until = time.monotonic() + seconds
        while len(ms) < max_queries:
            self.count += 1
            query = QueryInput(text=f"{sentence(self.rng)} inproc#{self.count}")
            start = time.perf_counter()
            self.services.queries.search(self.ctx, query, SearchParams(top_k=TOP_K))
            ms.append((time.perf_counter() - start) * 1e3)
            if time.monotonic() > until:
                break
        return ms

    def close(self) -> None:
        self.services.close()


async def load(target: str, concurrency: int, seconds: float, max_queries: int, tag: str) -> dict[str, Any]:
    """`concurrency` workers, each sending its next Search when the last one answers."""
    ms: list[float] = []
    errors: dict[str, int] = {}
    counter = itertools.count()
    rng = random.Random(concurrency)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        until = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < until:
                n = next(counter)
                if n >= max_queries:
                    return
                request = pb.SearchRequest(
                    query=pb.QueryInput(text=f"{sentence(rng)} {tag}#{n}"), top_k=TOP_K
                )
                start = time.perf_counter()
                try:
                    await stub.Search(request, timeout=60)
                    ms.append((time.perf_counter() - start) * 1e3)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - start
    return {
        "qps": len(ms) / elapsed,
        "p50_ms": statistics.median(ms) if ms else float("nan"),
        "ms": ms,
        "errors": errors,
    }


def scrape_batches(server: LaunchedServer) -> dict[str, tuple[float, float]]:
    """(sum, count) of the server's micro-batch size histograms, by kind ("text", "store"), and
    of its batch durations in seconds ("text_s", "store_s")."""
    port = next(
        (m.group(1) for line in server.output if (m := re.search(r"metrics on http://[^:]+:(\d+)/", line))),
        None,
    )
    if port is None:
        return {}
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, tuple[float, float]] = {}
    for name, stat, kind, value in re.findall(
        r'mmsearch_batch_(size|duration_seconds)_(sum|count)\{kind="(\w+)"\} (\S+)', text
    ):
        key = kind if name == "size" else f"{kind}_s"
        total, count = out.get(key, (0.0, 0.0))
        out[key] = (total + float(value), count) if stat == "sum" else (total, count + float(value))
    return out


def mean_batches(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    out = {}
    for kind, (total, count) in after.items():
        t0, c0 = before.get(kind, (0.0, 0.0))
        if count > c0:
            out[kind] = round((total - t0) / (count - c0), 4)
    return out


def run_model(model: str, args: argparse.Namespace) -> dict[str, object]:
    """Index, then `--rounds` rounds of: in-process, then each concurrency over gRPC. Rounds
    interleave the measurements, so that load from elsewhere on the machine falls on all of them
    alike; figures are medians over rounds (p99: over all of a level's latencies)."""
    bundle = bundle_name(model)
    rng = random.Random(args.seed)
    per_round = args.seconds / args.rounds
    per_round_n = max(1, args.max_queries // args.rounds)
    with tempfile.TemporaryDirectory(prefix=f"mmsearch-query-{model}-") as tmp:
        data, copy = Path(tmp) / "data", Path(tmp) / "inproc"
        t0 = time.monotonic()
        bundle_id, dim = build_index(data, bundle, args.points, args.seed)
        shutil.copytree(data, copy)
        log(f"{model}: {args.points} points (dim {dim}) indexed in {time.monotonic() - t0:.1f} s")
        ceiling = InProcess(copy, bundle, rng, args.torch_threads)
        env = {"MMSEARCH_TORCH_THREADS": str(args.torch_threads)}
        server = launch_server(data, "--metrics-port", "0", bundle=bundle, env=env, cwd=REPO, timeout=300)
        inproc: list[list[float]] = []
        levels: dict[int, list[dict[str, Any]]] = {c: [] for c in args.concurrency}
        batches: dict[int, dict[str, float]] = {}
        try:
            for c in args.concurrency:  # warm the server at every level before timing any
                asyncio.run(load(server.target, c, 1.0, 4 * c, f"warm{c}"))
            wait_idle(server.pid)
            for r in range(args.rounds):
                inproc.append(ceiling.measure(per_round, per_round_n))
                log(f"{model} round {r}: in-process p50 {statistics.median(inproc[-1]):.2f} ms")
                for c in args.concurrency:
                    before = scrape_batches(server)
                    got = asyncio.run(load(server.target, c, per_round, per_round_n, f"r{r}c{c}"))
                    levels[c].append(got)
                    batches[c] = mean_batches(before, scrape_batches(server))
                    log(f"{model} round {r}: c{c} {got['qps']:.1f} q/s, p50 {got['p50_ms']:.2f} ms")
        finally:
            server.stop()
            ceiling.close()
    result: dict[str, Any] = {
        "points": args.points,
        "dim": dim,
        "bundle_id": bundle_id,
        "inproc_p50_ms": statistics.median(statistics.median(ms) for ms in inproc),
        "inproc_qps": statistics.median(1e3 / statistics.mean(ms) for ms in inproc),
        "inproc_n": sum(len(ms) for ms in inproc),
        "torch_threads": ceiling.torch_threads,
    }
    for c, runs in levels.items():
        pooled = sorted(x for got in runs for x in got["ms"])
        result[f"qps_c{c}"] = statistics.median(got["qps"] for got in runs)
        result[f"p50_ms_c{c}"] = statistics.median(got["p50_ms"] for got in runs)
        result[f"p99_ms_c{c}"] = pooled[min(len(pooled) - 1, round(0.99 * (len(pooled) - 1)))]
        result[f"n_c{c}"] = len(pooled)
        result[f"mean_batch_c{c}"] = batches.get(c, {})
        errors = [got["errors"] for got in runs if got["errors"]]
        if errors:
            result[f"errors_c{c}"] = errors
    return _rounded(result) | {"goals": goals(model, result)}


def goals(model: str, r: dict[str, object]) -> dict[str, bool]:
    def f(key: str) -> float:
        value = r.get(key)
        return float(value) if isinstance(value, int | float) else float("nan")

    out = {
        "p50_c1_within_1.3x_inproc": f("p50_ms_c1") <= 1.3 * f("inproc_p50_ms"),
        "qps_c32_at_least_inproc": f("qps_c32") >= f("inproc_qps"),
    }
    if model != "tiny":
        out["qps_c32_at_least_2x_c1"] = f("qps_c32") >= 2 * f("qps_c1")
        out["qps_c32_at_least_3x_inproc"] = f("qps_c32") >= 3 * f("inproc_qps")
    return out


def _rounded(d: dict[str, object]) -> dict[str, object]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=20_000, help="points in each index")
    ap.add_argument("--models", default="tiny,ViT-B-32", help="comma-separated: tiny, ViT-B-32")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated client concurrency levels")
    ap.add_argument(
        "--seconds", type=float, default=30.0, help="at most this long per level, over all rounds"
    )
    ap.add_argument("--max-queries", type=int, default=5000, help="at most this many queries per level")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds the time is split into")
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch intra-op threads, in the server and the in-process ceiling alike (0: the server's default)",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}: choose from {', '.join(MODELS)}")
    started = time.monotonic()
    results = {m: run_model(m, args) for m in models}
    config = {
        "points": args.points,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "max_queries": args.max_queries,
        "rounds": args.rounds,
        "top_k": TOP_K,
        "cpus": os.cpu_count(),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps({"models": results, "config": config}))


if __name__ == "__main__":
    main()

"""Retrieval quality on the digits-world sample library.

1. Hard-negative mining on vs off: two bundles from the same base, seed and step budget, one with
   index-mined hard negatives and one without, evaluated on the held-out split: Recall@1/5/10 and
   mAP for every modality pair, and Recall@1 within the confusable digit sets (3/5/8, 1/7, 4/9),
   where queries and candidates are restricted to the set's digits.
2. Query stages: the held-out split indexed in the embedded store with the first bundle, queried
   through the service's pipeline with each stage added in turn (ann -> +rescore -> +maxsim ->
   +mmr): Recall@10 and nDCG@10 (class-level relevance, one hit per media) and the median
   latency per query.

Prints one JSON object.

    .venv/bin/python bench/quality.py [--steps 900] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from encoders.bundle import load_bundle
from encoders.embed import Embedder
from encoders.encoder import Encoder
from indexer.edge_store import EdgeStore
from indexer.ingest import ingest_path
from indexer.schema import CollectionSchema
from indexer.store import Stages
from server.config import ServerConfig
from server.context import background
from server.planner import SearchParams
from server.query_types import QueryInput
from server.services import make_services
from trainer.config import load_config
from trainer.evaluate import EvalItems, embed_items, retrieval_metrics
from trainer.manifest import load_manifest
from trainer.sample_data import generate_sample_library
from trainer.train import train

CONFUSABLE = {"3/5/8": ("3", "5", "8"), "1/7": ("1", "7"), "4/9": ("4", "9")}
CONFIG = Path(__file__).resolve().parents[1] / "trainer" / "configs" / "sample.json"

CTX = background()


def subset(items: EvalItems, groups: tuple[str, ...]) -> EvalItems:
    keep = np.isin(items.groups, groups)
    return EvalItems(
        items.modality,
        [k for k, m in zip(items.keys, keep, strict=True) if m],
        items.groups[keep],
        items.vectors[keep],
    )


def quality(bundle_dir: Path, test_manifest: Path) -> dict[str, Any]:
    embedder = Embedder(Encoder(load_bundle(str(bundle_dir))))
    try:
        items = embed_items(embedder, load_manifest(test_manifest))
    finally:
        embedder.close()
    pairs = {f"{q}->{t}": retrieval_metrics(items[q], items[t]) for q in items for t in items if q != t}
    confusable = {
        name: {
            f"{q}->{t}": retrieval_metrics(subset(items[q], digits), subset(items[t], digits))["R@1"]
            for q in items
            for t in items
            if q != t
        }
        for name, digits in CONFUSABLE.items()
    }
    return {"pairs": pairs, "confusable_R@1": confusable}


STAGES = {
    "ann": (Stages(oversampling=1, quantized=True, exact_rescore=False), False),
    "+rescore": (Stages(oversampling=4, quantized=True, exact_rescore=True), False),
    "+maxsim": (Stages(oversampling=4, quantized=True, exact_rescore=True), True),
    "+mmr": (Stages(oversampling=4, quantized=True, exact_rescore=True, mmr_lambda=0.7), True),
}


def _digit(payload: dict[str, Any]) -> str:
    return Path(str(payload.get("source", ""))).name.split("_", 1)[0]


def stage_quality(bundle_dir: Path, data: Path, workdir: Path, per_modality: int = 40) -> dict[str, Any]:
    """Index the held-out media, then run held-out queries through each stage configuration."""
    encoder = Encoder(load_bundle(str(bundle_dir)))
    store = EdgeStore(workdir / "index", CollectionSchema(encoder.bundle.bundle_id, encoder.dim))
    engine = make_services(Embedder(encoder), store, ServerConfig())
    try:
        for folder in ("images/test", "audio/test", "videos/test"):
            ingest_path(data / folder, engine.writes.indexer.index, progress=False)
        store.optimize()
        manifest = load_manifest(data / "test.jsonl")
        queries: dict[str, tuple[QueryInput, str]] = {}
        for p in manifest.pairs:
            for ref in (p.a, p.b):
                if ref.modality.value == "text":
                    queries.setdefault(f"text:{ref.text}", (QueryInput(text=ref.text), p.group))
                elif (
                    ref.path is not None
                    and sum(k.startswith(ref.modality.value) for k in queries) < per_modality
                ):
                    raw = ref.path.read_bytes()
                    queries.setdefault(
                        f"{ref.modality.value}:{ref.path}", (QueryInput(**{ref.modality.value: raw}), p.group)
                    )
        out: dict[str, Any] = {}
        for name, (stages, frames) in STAGES.items():
            recall, ndcg, ms = [], [], []
            for query, group in queries.values():
                params = SearchParams(top_k=10, stages=stages, frames_rescore=frames)
                t0 = time.perf_counter()
                hits = engine.queries.search(CTX, query, params).hits
                ms.append((time.perf_counter() - t0) * 1e3)
                rel = [int(_digit(h.payload) == group) for h in hits]
                recall.append(float(any(rel)))
                ndcg.append(
                    sum(r / math.log2(i + 2) for i, r in enumerate(rel))
                    / sum(1 / math.log2(i + 2) for i in range(10))
                )
            out[name] = {
                "R@10": round(float(np.mean(recall)), 4),
                "nDCG@10": round(float(np.mean(ndcg)), 4),
                "ms": round(float(np.median(ms)), 2),
            }
        return {"queries": len(queries), "stages": out}
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, help="training steps for each run (default: the sample config's)")
    ap.add_argument("--data", type=Path, help="sample library folder (generated if missing)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "digits"
        generate_sample_library(data)
        # Equal step budgets for both runs: no time limit (mining makes each step slower).
        base = replace(load_config(CONFIG, {"steps": args.steps, "seed": args.seed}), max_minutes=None)
        runs: dict[str, Any] = {}
        for name, enabled in (("mining_off", False), ("mining_on", True)):
            cfg = replace(base, mining=replace(base.mining, enabled=enabled))
            out = Path(tmp) / name
            result = train(cfg, data / "train.jsonl", out, log=lambda line: print(line, file=sys.stderr))
            runs[name] = {"train_seconds": result.seconds, "final_loss": round(result.final_loss, 4)}
            runs[name] |= quality(out, data / "test.jsonl")
        staged = stage_quality(Path(tmp) / "mining_off", data, Path(tmp))
    print(
        json.dumps(
            {
                "steps": base.steps,
                "seed": args.seed,
                "mining": {"k": base.mining.k, "refresh_every": base.mining.refresh_every},
                "hard_negatives": runs,
                "stages": staged["stages"],
                "stage_queries": staged["queries"],
                "confusable_summary": {
                    s: {
                        p: {
                            "off": runs["mining_off"]["confusable_R@1"][s][p],
                            "on": runs["mining_on"]["confusable_R@1"][s][p],
                        }
                        for p in ("text->image", "image->video", "audio->image")
                    }
                    for s in CONFUSABLE
                },
            }
        )
    )


if __name__ == "__main__":
    main()

"""Retrieval quality on the two generated worlds: does each stage earn its cost?

For each world ("hard": 320 fine-grained classes and minute-long videos; "digits": the demo's ten
classes) and each seed:

1. Hard-negative mining on vs off at equal training time: two runs from the same base, seed and
   time budget (mining's own cost counted inside it), trained side by side in two processes of
   one thread each, so contention on a shared machine hits both alike. Evaluated on the held-out
   split: Recall@1 over all pairs, and Recall@1 within the confusable groups (hard world: the
   groups that differ in one attribute; digits: 3/5/8, 1/7, 4/9), queries and candidates
   restricted to one group at a time.
2. Frame re-scoring: the held-out media indexed in the embedded store with the world's default
   bundle (hard: mining on; digits: the demo's, mining off) and queried through the service's
   planner; on long videos, the top segment with pooled (mean-of-frames) vectors only vs with
   MAX_SIM frame re-scoring: segment-level R@1 and the error of the returned time range.
3. MMR: the first ten hits with no per-media cap, without and with MMR: distinct media, nDCG@10.
4. Calibration: the share of relevant hits one calibrated threshold keeps on every (query,
   target) pair, beside the same for one raw-cosine threshold (fitted and measured on disjoint
   halves of the queries).

Figures over seeds are {"mean", "std", "values"}. Prints one JSON object; today's keys (from the
digits world, seed 0) come first, then {"worlds": {"hard": ..., "digits": ...}}.

    .venv/bin/python bench/quality.py                      # full: both worlds, 3 seeds
    .venv/bin/python bench/quality.py --worlds hard --seeds 1 --minutes 1 --queries 20   # reduced
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality_measures import (
    calibration_shares,
    mean_std,
    mmr_quality,
    segment_quality,
    served,
    stage_quality,
)
from bench.quality_world import World
from encoders.modality import Modality
from trainer.config import TrainConfig, load_config, packaged_config
from trainer.evaluate import confusable_recall, neighbourhood_recall, retrieval_metrics, subset

CONFIGS = {"hard": "hard.json", "digits": "sample.json"}
DEFAULT_MINUTES = {"hard": 4.0, "digits": 3.0}
MMR_LAMBDA = 0.5


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _train_one(config: TrainConfig, manifest: Path, out: Path) -> dict[str, Any]:
    """One training run in a worker process, on one thread."""
    import torch

    from trainer.train import train

    torch.set_num_threads(1)
    name = out.name
    result = train(config, manifest, out, log=lambda line: _log(f"[{name}] {line}"))
    return {
        "steps": result.steps,
        "wall_seconds": result.seconds,
        "cpu_seconds": result.cpu_seconds,
        "mining_seconds": result.mining_seconds,
        "final_loss": round(result.final_loss, 4),
    }


def train_pair(world: World, config: TrainConfig, seed: int, workdir: Path) -> dict[str, dict[str, Any]]:
    """Mining off and on, side by side, with the same seed and time budget."""
    runs = {}
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        futures = {}
        for name, enabled in (("mining_off", False), ("mining_on", True)):
            cfg = replace(config, seed=seed, mining=replace(config.mining, enabled=enabled)).validate()
            futures[name] = pool.submit(_train_one, cfg, world.train_manifest, workdir / f"{name}-{seed}")
        for name, future in futures.items():
            runs[name] = future.result()
    return runs


def retrieval(world: World, bundle: Path) -> tuple[dict[str, Any], dict[Modality, Any]]:
    """R@1/5/10 and mAP per pair, and R@1 within the confusable groups, on the held-out split."""
    items = world.embed_test(bundle)
    pairs = world.pairs(items)
    # Only queries that have an answer among the targets (hard world: a look's caption is no
    # query for sounds); every target stays a candidate.
    asked = {(q, t): subset(items[q], sorted(set(items[t].groups.tolist()))) for q, t in pairs}
    table = {f"{q}->{t}": retrieval_metrics(asked[q, t], items[t]) for q, t in pairs}
    # Per set of look-alikes (digits: 3/5/8, 1/7, 4/9; hard: by the attribute they differ in).
    by_set = {
        f"{q}->{t}": confusable_recall(asked[q, t], items[t], world.confusable_sets(items[q], items[t]))
        for q, t in pairs
    }
    # Each query among its own class's look-alikes: the figure mining is judged on.
    among = {
        f"{q}->{t}": neighbourhood_recall(items[q], items[t], world.confusers(items[q], items[t]))
        for q, t in pairs
    }
    out = {
        "pairs": table,
        "confusable_R@1": {p: {**by_set[p], "look-alikes": among[p]} for p in table},
        "mean_R@1": round(float(np.mean([m["R@1"] for m in table.values()])), 4),
        "mean_confusable_R@1": round(float(np.mean([v for v in among.values() if v is not None])), 4),
    }
    return out, items


def serve_measures(
    world: World, bundle: Path, items: dict[Modality, Any], workdir: Path, n_queries: int
) -> dict[str, Any]:
    """Calibration on the embedded items; frame re-scoring and MMR through the store and planner."""
    out: dict[str, Any] = {"calibration": calibration_shares(items, world.pairs(items))}
    with served(bundle, world.test_folders(), workdir) as engine:
        segments = world.segment_queries(n_queries)
        pooled = segment_quality(engine, segments, world.relevant, frames=False, long_only=world.long_only)
        frames = segment_quality(engine, segments, world.relevant, frames=True, long_only=world.long_only)
        out["segments"] = {"queries": len(segments), "pooled": pooled, "frames": frames}
        texts = world.text_queries(n_queries)
        relevant = world.relevant
        out["mmr"] = mmr_quality(
            engine, texts, relevant, world.count_relevant(engine.store), mmr_lambda=MMR_LAMBDA
        )
        if world.name == "digits":
            stage_queries = texts + world.media_queries(n_queries)
            out["stages"] = stage_quality(engine, stage_queries, relevant)
            out["stage_queries"] = len(stage_queries)
    return out


def run_world(world: World, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    config = load_config(packaged_config(CONFIGS[world.name]))
    minutes = args.minutes if args.minutes is not None else DEFAULT_MINUTES[world.name]
    config = replace(config, max_minutes=minutes, budget_clock=args.clock, checkpoint_every=10**6).validate()
    default_on = world.name == "hard"  # the world's own config: hard mines, the demo does not
    seeds: list[dict[str, Any]] = []
    for seed in range(args.seed, args.seed + args.seeds):
        _log(f"== {world.name} seed {seed}: training mining off and on, {minutes} min ({args.clock}) each")
        runs = train_pair(world, config, seed, workdir)
        record: dict[str, Any] = {"seed": seed, "train": runs}
        for name in runs:
            record[name], items = retrieval(world, workdir / f"{name}-{seed}")
            if (name == "mining_on") == default_on:
                chosen = name
                default_items = items
        _log(f"== {world.name} seed {seed}: store measures on the {chosen} bundle")
        record["served"] = serve_measures(
            world, workdir / f"{chosen}-{seed}", default_items, workdir / f"store-{seed}", args.queries
        )
        record["served"]["bundle"] = chosen
        seeds.append(record)
    return _summarise(world, config, seeds)


def _summarise(world: World, config: TrainConfig, seeds: list[dict[str, Any]]) -> dict[str, Any]:
    def per_seed(path: tuple[str, ...]) -> list[float]:
        values = []
        for s in seeds:
            v: Any = s
            for key in path:
                v = v[key]
            values.append(float(v))
        return values

    def gain(on: tuple[str, ...], off: tuple[str, ...]) -> dict[str, Any]:
        return mean_std([a - b for a, b in zip(per_seed(on), per_seed(off), strict=True)])

    served = ("served",)
    return {
        "budget": {"minutes": config.max_minutes, "clock": config.budget_clock},
        "seeds": [s["seed"] for s in seeds],
        "mining": {
            "config": {k: v for k, v in config.mining.__dict__.items() if k != "enabled"},
            "hardness_beta": config.hardness_beta,
            "R@1_off": mean_std(per_seed(("mining_off", "mean_R@1"))),
            "R@1_on": mean_std(per_seed(("mining_on", "mean_R@1"))),
            "confusable_R@1_off": mean_std(per_seed(("mining_off", "mean_confusable_R@1"))),
            "confusable_R@1_on": mean_std(per_seed(("mining_on", "mean_confusable_R@1"))),
            "steps_off": per_seed(("train", "mining_off", "steps")),
            "steps_on": per_seed(("train", "mining_on", "steps")),
        },
        "mining_gain_R@1": gain(("mining_on", "mean_R@1"), ("mining_off", "mean_R@1")),
        "mining_gain_confusable_R@1": gain(
            ("mining_on", "mean_confusable_R@1"), ("mining_off", "mean_confusable_R@1")
        ),
        "segments": {
            "queries": seeds[0]["served"]["segments"]["queries"],
            "pooled_R@1": mean_std(per_seed((*served, "segments", "pooled", "segment_R@1"))),
            "frames_R@1": mean_std(per_seed((*served, "segments", "frames", "segment_R@1"))),
            "pooled_time_error_s": [s["served"]["segments"]["pooled"]["time_error_s"] for s in seeds],
            "frames_time_error_s": [s["served"]["segments"]["frames"]["time_error_s"] for s in seeds],
        },
        "frames_rescore_gain_segment_R@1": gain(
            (*served, "segments", "frames", "segment_R@1"), (*served, "segments", "pooled", "segment_R@1")
        ),
        "mmr": {
            "lambda": MMR_LAMBDA,
            "distinct_media_off": mean_std(per_seed((*served, "mmr", "off", "distinct_media"))),
            "distinct_media_on": mean_std(per_seed((*served, "mmr", "on", "distinct_media"))),
            "distinct_media_gain": gain(
                (*served, "mmr", "on", "distinct_media"), (*served, "mmr", "off", "distinct_media")
            ),
            "ndcg_cost": gain((*served, "mmr", "off", "nDCG@10"), (*served, "mmr", "on", "nDCG@10")),
        },
        "calibration": {
            "calibrated_spread": mean_std(per_seed((*served, "calibration", "calibrated_spread"))),
            "raw_spread": mean_std(per_seed((*served, "calibration", "raw_spread"))),
            "platt_spread": mean_std(per_seed((*served, "calibration", "platt_spread"))),
            "seed_0": seeds[0]["served"]["calibration"],
        },
        "per_seed": seeds,
    }


def todays_keys(digits: dict[str, Any]) -> dict[str, Any]:
    """The keys this bench printed before the worlds: the digits world's first seed."""
    first = digits["per_seed"][0]
    runs = {
        name: {
            "train_seconds": first["train"][name]["wall_seconds"],
            "final_loss": first["train"][name]["final_loss"],
            "pairs": first[name]["pairs"],
            "confusable_R@1": first[name]["confusable_R@1"],
        }
        for name in ("mining_off", "mining_on")
    }
    sets = ("3/5/8", "1/7", "4/9")
    return {
        "steps": first["train"]["mining_off"]["steps"],
        "seed": first["seed"],
        "mining": digits["mining"]["config"],
        "hard_negatives": runs,
        "stages": first["served"]["stages"],
        "stage_queries": first["served"]["stage_queries"],
        "confusable_summary": {
            s: {
                p: {
                    "off": runs["mining_off"]["confusable_R@1"][p][s],
                    "on": runs["mining_on"]["confusable_R@1"][p][s],
                }
                for p in ("text->image", "image->video", "audio->image")
            }
            for s in sets
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", default="hard,digits", help="comma-separated: hard, digits")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per world")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--minutes", type=float, help="training budget per run (default: hard 4, digits 3)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="how the budget is counted")
    ap.add_argument("--queries", type=int, default=100, help="text (and media) queries per store measure")
    ap.add_argument("--data", type=Path, help="folder for the generated libraries (kept; default: temporary)")
    args = ap.parse_args()
    worlds = [w.strip() for w in args.worlds.split(",") if w.strip()]
    if not worlds or any(w not in CONFIGS for w in worlds):
        ap.error(f"--worlds takes a comma-separated list of {', '.join(CONFIGS)}")
    # One thread per training process and per BLAS call: the two runs of a pair share the machine.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp)
        results = {}
        for name in worlds:
            world = World.generate(name, data / name)
            results[name] = run_world(world, args, Path(tmp) / f"runs-{name}")
        if "digits" in results:
            out |= todays_keys(results["digits"])
        out["worlds"] = results
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

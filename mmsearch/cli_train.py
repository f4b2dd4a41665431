"""`mmsearch sample-data`, `train` and `eval`: the trainer's commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parsers(sub: Any) -> None:
    sample = sub.add_parser("sample-data", help="generate a sample library (digits or hard world)")
    sample.add_argument("dir", type=Path)
    sample.add_argument(
        "--world",
        choices=("digits", "hard"),
        default="digits",
        help="digits: ten classes (the demo's); hard: 320 fine-grained classes and minute-long videos",
    )
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--force", action="store_true", help="regenerate even if the library is there")
    sample.add_argument("--json", action="store_true")

    train = sub.add_parser("train", help="fine-tune a bundle's towers on JSONL manifests")
    train.add_argument("--config", type=Path, help="JSON training config (flags override it)")
    train.add_argument("--data", type=Path, help="folder holding train.jsonl (and test.jsonl for the eval)")
    train.add_argument("--manifest", type=Path, help="training manifest, instead of --data/train.jsonl")
    train.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    train.add_argument("--base-bundle", help="bundle to start from (default: the config's, or tiny)")
    train.add_argument("--steps", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--max-minutes", type=float, help="stop and save after this much training time")
    train.add_argument("--hardness-beta", type=float, help="in-batch hardness weighting (0 = off)")
    mining = train.add_mutually_exclusive_group()
    mining.add_argument(
        "--hard-negatives",
        dest="mining",
        action="store_true",
        default=None,
        help="mine negatives from an index built with the current model",
    )
    mining.add_argument("--no-hard-negatives", dest="mining", action="store_false")
    train.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when present)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    train.add_argument("--json", action="store_true", help="print the result (and eval) as JSON")

    ev = sub.add_parser("eval", help="Recall@1/5/10 and mAP for every modality pair of a manifest")
    ev.add_argument("--bundle", required=True)
    ev.add_argument("--manifest", type=Path, required=True)
    ev.add_argument("--device")
    ev.add_argument(
        "--calibrate",
        action="store_true",
        help="fit per-pair score calibration on this manifest into the bundle",
    )
    ev.add_argument("--json", action="store_true")


def sample_data(args: argparse.Namespace) -> int:
    from trainer.worlds import generate_world

    summary = generate_world(args.world, args.dir, seed=args.seed, force=args.force)
    info: dict[str, Any] = {
        "world": args.world,
        "images": summary.images,
        "audio": summary.audio,
        "videos": summary.videos,
        "long_videos": summary.long_videos,
        "train_pairs": summary.train_pairs,
        "test_pairs": summary.test_pairs,
        "train_manifest": str(summary.train_manifest),
        "test_manifest": str(summary.test_manifest),
    }
    print(json.dumps(info) if args.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
    return 0


def _train_manifest(args: argparse.Namespace) -> Path:
    if args.manifest:
        return Path(args.manifest)
    if args.data:
        return Path(args.data) / "train.jsonl"
    raise ValueError("give --data DIR (with train.jsonl) or --manifest FILE")


def run_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from trainer.config import load_config
    from trainer.distributed import launched_rank
    from trainer.train import train

    overrides = {
        "base_bundle": args.base_bundle,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "max_minutes": args.max_minutes,
        "hardness_beta": args.hardness_beta,
        "device": args.device,
    }
    config = load_config(args.config, overrides)
    if args.mining is not None:
        config = replace(config, mining=replace(config.mining, enabled=args.mining)).validate()
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = train(config, _train_manifest(args), args.out, resume=args.resume, log=log)
    if launched_rank() != 0:
        return 0  # under torchrun, process 0 reports (and evaluates) for the run
    for line in result.skipped:
        log(f"skipped {line}")
    out: dict[str, Any] = {
        "bundle": str(result.out_dir),
        "steps": result.steps,
        "seconds": result.seconds,
        "pairs_per_second": result.pairs_per_second,
        "first_loss": round(result.first_loss, 4),
        "final_loss": round(result.final_loss, 4),
        "skipped_lines": len(result.skipped),
        "stopped_early": result.stopped_early,
    }
    test = Path(args.data) / "test.jsonl" if args.data else None
    if test is not None and test.is_file():
        # The held-out eval also fits the bundle's score calibration (server: calibrated_score).
        out["eval"] = evaluate_bundle(str(args.out), test, args.device, calibrate=True)
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"trained {result.steps} steps in {result.seconds:.0f} s, loss {out['first_loss']} -> {out['final_loss']}"
        )
        print(f"bundle written to {result.out_dir}")
        if "eval" in out:
            from trainer.evaluate import format_table

            print(format_table(out["eval"]))
    return 0


def evaluate_bundle(
    bundle: str, manifest: Path, device: str | None, *, calibrate: bool = False
) -> dict[str, dict[str, float]]:
    """The eval table; with `calibrate`, also fit per-pair score calibration on the manifest and
    write it into the bundle directory (the server reads it)."""
    from encoders.bundle import load_bundle
    from encoders.embed import Embedder
    from encoders.encoder import Encoder
    from trainer.evaluate import evaluate
    from trainer.manifest import load_manifest

    embedder = Embedder(Encoder(load_bundle(bundle, device)))
    try:
        pairs, calibration = evaluate(embedder, load_manifest(manifest))
    finally:
        embedder.close()
    if calibrate:
        calibration.save(Path(bundle))
    return pairs


def run_eval(args: argparse.Namespace) -> int:
    from trainer.evaluate import format_table

    pairs = evaluate_bundle(args.bundle, args.manifest, args.device, calibrate=args.calibrate)
    print(json.dumps({"pairs": pairs}) if args.json else format_table(pairs))
    return 0

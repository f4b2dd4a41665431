"""Retrieval quality on the digits-world sample library: hard-negative mining on vs off.

Trains two bundles from the same base, seed and step budget — one with index-mined hard
negatives, one without — and evaluates both on the held-out split: Recall@1/5/10 and mAP for
every modality pair, and Recall@1 within the confusable digit sets (3/5/8, 1/7, 4/9), where the
query and the candidates are restricted to the set's digits. Prints one JSON object.

    .venv/bin/python bench/quality.py [--steps 900] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders.bundle import load_bundle
from encoders.decode import MediaDecoder
from encoders.encoder import Encoder
from trainer.config import load_config
from trainer.evaluate import EvalItems, embed_items, retrieval_metrics
from trainer.manifest import load_manifest
from trainer.sample_data import generate_sample_library
from trainer.train import train

CONFUSABLE = {"3/5/8": ("3", "5", "8"), "1/7": ("1", "7"), "4/9": ("4", "9")}
CONFIG = Path(__file__).resolve().parents[1] / "trainer" / "configs" / "sample.json"


def subset(items: EvalItems, groups: tuple[str, ...]) -> EvalItems:
    keep = np.isin(items.groups, groups)
    return EvalItems(
        items.modality,
        [k for k, m in zip(items.keys, keep, strict=True) if m],
        items.groups[keep],
        items.vectors[keep],
    )


def quality(bundle_dir: Path, test_manifest: Path) -> dict[str, Any]:
    encoder = Encoder(load_bundle(str(bundle_dir)))
    decoder = MediaDecoder(sample_rate=encoder.audio_sample_rate)
    try:
        items = embed_items(encoder, decoder, load_manifest(test_manifest))
    finally:
        decoder.close()
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
    print(
        json.dumps(
            {
                "steps": base.steps,
                "seed": args.seed,
                "mining": {"k": base.mining.k, "refresh_every": base.mining.refresh_every},
                "hard_negatives": runs,
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

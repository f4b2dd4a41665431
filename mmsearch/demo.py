"""`mmsearch demo`: the whole product on generated data, offline, in a few minutes.

sample library -> train a starter bundle (cached) -> start the server on the embedded store ->
ingest the held-out split over gRPC -> cross-modal queries through the client -> result tables
-> the evaluation table.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from mmsearch import client as mc
from mmsearch.launch import launch_server

STARTER_CONFIG = "sample.json"  # trainer/configs/, shipped with the package


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _train_starter(lib: Path, bundle_dir: Path, retrain: bool) -> None:
    from trainer.config import load_config, packaged_config
    from trainer.train import train

    config = load_config(packaged_config(STARTER_CONFIG))
    marker = bundle_dir / "demo-train.json"
    # Round-trip through JSON so tuples compare equal to the lists read back from the marker.
    want = json.loads(
        json.dumps({"config": config.to_json(), "library": json.loads((lib / "sample.json").read_text())})
    )
    if not retrain and marker.is_file() and json.loads(marker.read_text()) == want:
        print(f"starter bundle cached in {bundle_dir} (--retrain to train again)")
        return
    shutil.rmtree(bundle_dir, ignore_errors=True)
    result = train(config, lib / "train.jsonl", bundle_dir)
    print(
        f"trained {result.steps} steps in {result.seconds:.0f} s, loss {result.first_loss:.3f} -> {result.final_loss:.3f}"
    )
    marker.write_text(json.dumps(want))


def starter_marker(config: dict[str, Any], lib: Path) -> dict[str, Any]:
    """What the cached starter bundle was trained with: the config and the library's parameters.
    Round-tripped through JSON so tuples compare equal to the lists read back from the file."""
    library = json.loads((lib / "sample.json").read_text())
    return json.loads(json.dumps({"config": config, "library": library}))


def _digit(source: str) -> str:
    return Path(source).name.split("_", 1)[0]


def _table(title: str, hits: list[dict[str, Any]], root: Path) -> None:
    print(f"\n{title}")
    print(f"  {'rank':<5}{'score':>7}  {'digit':<6}{'modality':<9}{'time':<14}source")
    for rank, h in enumerate(hits, 1):
        span = f"{h['t_start']:.1f}-{h['t_end']:.1f}s {h['track'][0]}" if "t_start" in h else ""
        source = (
            str(Path(h["source"]).relative_to(root)) if h["source"].startswith(str(root)) else h["source"]
        )
        print(f"  {rank:<5}{h['score']:>7.3f}  {_digit(h['source']):<6}{h['modality']:<9}{span:<14}{source}")


def run_demo(workdir: Path, *, retrain: bool = False) -> int:
    from mmsearch.remote_ingest import ingest_remote
    from trainer.sample_data import generate_sample_library

    started = time.perf_counter()
    workdir = workdir.resolve()
    lib, bundle_dir, data = workdir / "library", workdir / "bundle", workdir / "data"

    _step("1/5 sample library (digits world)")
    s = generate_sample_library(lib)
    print(
        f"{s.images} images, {s.audio} audio clips, {s.videos} videos; {s.train_pairs} train / {s.test_pairs} test pairs"
    )

    _step("2/5 starter bundle")
    _train_starter(lib, bundle_dir, retrain)

    _step("3/5 server on the embedded store, ingest of the held-out split")
    shutil.rmtree(data, ignore_errors=True)  # a retrained bundle is another space: index afresh
    # The server's own log lines are kept (server.output), not printed over the demo's tables.
    server = launch_server(data, bundle=str(bundle_dir))
    target = server.target
    try:
        with mc.MMSearchClient(target) as client:
            client.wait_ready(60)
            for folder in ("images/test", "audio/test", "videos/test"):
                # The same streaming ingest as `mmsearch ingest PATH --server`.
                summary = ingest_remote(client, lib / folder)
                print(
                    f"{folder}: indexed {summary.indexed}, failed {summary.failed + summary.quarantined} "
                    f"in {summary.seconds:.1f} s"
                )
            stats = client.stats()
            print(f"serving {stats.points} points on {target} (bundle {stats.bundle_id})")

            _step("4/5 cross-modal queries over gRPC (queries come from the training split)")
            queries: list[tuple[str, dict[str, Any], str]] = [
                ('text "a handwritten seven" -> image', {"text": "a handwritten seven"}, "image"),
                ('text "the sound of three" -> audio', {"text": "the sound of three"}, "audio"),
                ('text "the number five" -> video', {"text": "the number five"}, "video"),
                ("image of a 4 -> video", {"image": _first(lib, "images/train", "4_")}, "video"),
                ("audio of an 8 -> image", {"audio": _first(lib, "audio/train", "8_")}, "image"),
                ("video of a 2 -> audio", {"video": _first(lib, "videos/train", "2_")}, "audio"),
            ]
            for title, query, target_modality in queries:
                resp = client.search(top_k=5, modalities=[target_modality], **query)
                _table(title, [mc.hit_to_dict(h) for h in resp.hits], lib)
    finally:
        server.stop()

    _step("5/5 held-out evaluation (class-level relevance)")
    from mmsearch.cli_train import evaluate_bundle
    from trainer.evaluate import format_table

    print(format_table(evaluate_bundle(str(bundle_dir), lib / "test.jsonl", None)))
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    return 0


def _first(lib: Path, folder: str, prefix: str) -> bytes:
    return sorted((lib / folder).glob(f"{prefix}*"))[0].read_bytes()

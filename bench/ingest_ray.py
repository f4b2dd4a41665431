"""The Ray figures of bench/ingest.py: a library through `indexer.ray_ingest` on a local Ray
instance (this one node, every core, no dashboard), into a fresh embedded store the driver
owns, with its journal and quarantine report, as the local run writes.

The Ray instance is started once (`start`). A Ray job has a fixed start the local run does not
time (its model is loaded and its decoder processes started beforehand): the embed actor imports
torch and loads the model, once per run. So the rate is the marginal one, over two runs timed
whole: one on a few of the files (`warm`), one on all of them,

    items_per_s = (files - warm files) / (time of all - time of the few)

which cancels that fixed start; `startup_s` is what it came to. A first, untimed run on the few
files starts Ray's task workers.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.edge_store import EdgeStore
from indexer.ingest_local import IngestRequest
from indexer.pipeline import PipelineOptions
from indexer.ray_ingest import RayOptions, StoreTarget, ray_ingest
from indexer.schema import CollectionSchema
from indexer.sources import SourceFile
from mmsearch.ray_cli import ServerEmbedder
from server.config import ServerConfig


def start(cores: int) -> Any | None:
    """A local Ray instance for the runs, or None without the ray extra."""
    try:
        import ray
    except ImportError:
        return None
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    return ray


@dataclass(frozen=True)
class RayFigures:
    items_per_s: float  # marginal: the job's fixed start cancelled out
    startup_s: float  # the fixed start of a job on this node (actor start, first batches)
    run_s: float  # the whole run on every file


def ray_run(
    name: str,
    files: list[SourceFile],
    root: Path,
    bundle: str,
    schema: CollectionSchema,
    options: PipelineOptions,
    work: Path,
    *,
    warm: Path,
    device: str | None = None,
) -> RayFigures:
    """The Ray ingest's rate on `files` (under `root`) into fresh embedded stores; `warm` holds
    a few of the same kind of files."""
    make = ServerEmbedder(ServerConfig(bundle=bundle, device=device))
    few = sum(1 for p in warm.iterdir() if p.is_file())
    _ingest(make, warm, schema, options, work)
    start = time.perf_counter()
    _ingest(make, warm, schema, options, work)
    small = time.perf_counter() - start
    start = time.perf_counter()
    summary = _ingest(make, root, schema, options, work)
    whole = time.perf_counter() - start
    if summary.indexed != len(files):
        raise RuntimeError(f"{name} (ray): indexed {summary.indexed} of {len(files)}: {summary.errors[:3]}")
    rate = (len(files) - few) / max(whole - small, 1e-9)
    return RayFigures(rate, max(0.0, whole - len(files) / rate), whole)


def _ingest(
    make: ServerEmbedder, root: Path, schema: CollectionSchema, options: PipelineOptions, work: Path
) -> Any:
    data = Path(tempfile.mkdtemp(dir=work))
    store = EdgeStore(data, schema)
    try:
        request = IngestRequest(
            path=root, journal=data / "journal.sqlite", quarantine=data / "q.jsonl", progress=False
        )
        return ray_ingest(make, StoreTarget(store), request, options, RayOptions())
    finally:
        store.close()

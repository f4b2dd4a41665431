"""A real `mmsearch serve` process on a free port, spoken to over a real gRPC channel."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from indexer.edge_store import SHARD_DIR, EdgeStore
from indexer.schema import CollectionSchema, PointRecord
from mmsearch.client import MMSearchClient
from mmsearch.launch import launch_server

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    target: str
    data_dir: Path
    output: list[str]

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def start_server(
    data_dir: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 120
) -> ServerProcess:
    srv = launch_server(data_dir, *extra, env=env, cwd=REPO, timeout=timeout)
    return ServerProcess(srv.proc, srv.target, data_dir, srv.output)


def write_quantized_store(data_dir: Path, schema: CollectionSchema, points: Sequence[PointRecord]) -> None:
    """An embedded store in `data_dir` holding `points`, every segment already indexed with its
    int8 codes, for `start_server` to open. A shard builds the codes only past ~10 MB of vectors
    (some 40,000 points here), which test data never reaches, so quantization would change nothing
    a test can see: lower the shard's indexing threshold instead. No graph (m=0): the ANN pass
    scans the int8 codes, so what it finds does not depend on HNSW's randomness."""
    EdgeStore(data_dir, schema, hnsw_m=0).close()
    config_path = data_dir / SHARD_DIR / "edge_config.json"
    config = json.loads(config_path.read_text())
    config["optimizers"] = {"indexing_threshold": 1}  # KB: index every segment
    config_path.write_text(json.dumps(config))
    store = EdgeStore(data_dir, schema)
    try:
        store.upsert(points)
        store.optimize()
        indexed = store._shard.info().indexed_vectors_count
        if indexed < len(points):  # the shard ignored the threshold: no int8 codes to test
            raise RuntimeError(f"{indexed} of {len(points)} vectors indexed in {data_dir}")
    finally:
        store.close()


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmsearch", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("data")
    srv = start_server(data, env={"MMSEARCH_MAX_MESSAGE_BYTES": str(2 * 1024 * 1024)})
    yield srv
    srv.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[MMSearchClient]:
    with MMSearchClient(server.target, timeout=60) as c:
        c.wait_ready(30)
        yield c

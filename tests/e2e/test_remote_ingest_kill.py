"""A server killed with SIGKILL in the middle of a remote ingest loses nothing it acknowledged and
gains no duplicates: after a restart, the same command finishes the job exactly."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc

from encoders.bundle import load_bundle
from indexer.edge_store import EdgeStore
from indexer.journal import Journal
from indexer.schema import CollectionSchema
from mmsearch.client import MMSearchClient
from mmsearch.remote_ingest import RemoteIngestError, ingest_remote
from server.config import ServerConfig
from server.ingest import journal_path
from tests.e2e.conftest import start_server
from tests.media import make_image

FILES = 500
KILL_AT_POINTS = 50


def _library(root: Path) -> list[Path]:
    files = []
    for i in range(FILES):
        folder = root / f"part{i // 100}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{i:03d}.jpg"
        make_image(10_000 + i, (64, 48)).save(path, quality=90)
        files.append(path)
    return files


def test_server_killed_mid_ingest_then_rerun_gives_the_exact_points(tmp_path: Path) -> None:
    files = _library(tmp_path / "lib")
    data, spool = tmp_path / "data", tmp_path / "spool"
    env = {"MMSEARCH_INGEST_SPOOL_DIR": str(spool)}
    srv = start_server(data, env=env)
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            with MMSearchClient(srv.target) as c:
                ingest_remote(c, tmp_path / "lib")
        except (grpc.RpcError, RemoteIngestError) as exc:
            errors.append(exc)

    worker = threading.Thread(target=ingest)
    worker.start()
    try:
        with MMSearchClient(srv.target, timeout=10) as watcher:
            deadline = time.monotonic() + 180
            while watcher.stats().points < KILL_AT_POINTS:
                assert time.monotonic() < deadline, "the ingest wrote nothing in time"
                time.sleep(0.01)
        os.kill(srv.proc.pid, signal.SIGKILL)
    finally:
        srv.proc.wait(timeout=60)
        worker.join(timeout=120)
    assert not worker.is_alive()
    assert errors, "the ingest finished before the kill: nothing was tested"
    assert any(spool.iterdir()), "the killed server's spool should still be on disk"

    srv = start_server(data, env=env)
    try:
        with MMSearchClient(srv.target) as c:
            survived = c.stats().points
            assert KILL_AT_POINTS <= survived < FILES
            summary = ingest_remote(c, tmp_path / "lib")
            assert (summary.quarantined, summary.failed) == (0, 0), summary.errors
            # Every file stored before the kill is recognised (by the journal, or by its point
            # for files written but not yet journaled); only the rest is embedded again.
            assert (summary.unchanged, summary.indexed) == (survived, FILES - survived)
            assert c.stats().points == FILES
    finally:
        assert srv.stop() == 0
    assert list(spool.iterdir()) == [], "the orphaned spool was not removed"

    bundle = load_bundle("tiny", device="cpu")
    store = EdgeStore(data, CollectionSchema(bundle_id=bundle.bundle_id, dim=bundle.embed_dim))
    try:
        points, offset = [], None
        while True:
            page, offset = store.scroll(limit=256, offset=offset)
            points += page
            if offset is None:
                break
    finally:
        store.close()
    hashes = [p.payload["content_hash"] for p in points]
    assert len(points) == FILES and len(set(hashes)) == FILES
    assert {p.payload["source"] for p in points} == {str(f) for f in files}
    with Journal(journal_path(ServerConfig(data_dir=data))) as journal:
        assert journal.count() == FILES

"""`mmsearch ingest` killed with SIGKILL mid-run, twice, then run again: the index holds exactly
one point per file, no duplicates, and the last run resumes instead of starting over."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from indexer.edge_store import EdgeStore
from indexer.ingest_local import JOURNAL_FILE
from indexer.schema import CollectionSchema
from tests.e2e.conftest import REPO
from tests.media import image_bytes

FILES = 500


def _ingest(lib: Path, data: Path) -> subprocess.Popen[str]:
    argv = ["ingest", str(lib), "--data", str(data), "--bundle", "tiny", "--device", "cpu"]
    argv += ["--json", "--no-progress", "--workers", "2", "--batch-size", "16"]
    return subprocess.Popen(
        [sys.executable, "-m", "mmsearch", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _journaled(data: Path) -> int:
    path = data / JOURNAL_FILE
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT count(*) FROM files").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return 0


def _kill_after(proc: subprocess.Popen[str], data: Path, at_least: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while (n := _journaled(data)) < at_least:
        assert proc.poll() is None, f"ingest ended before it was killed: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "ingest made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return n


def test_ingest_survives_two_sigkills(tmp_path: Path) -> None:
    lib, data = tmp_path / "lib", tmp_path / "data"
    lib.mkdir()
    for i in range(FILES):
        sub = lib / f"d{i % 7}"
        sub.mkdir(exist_ok=True)
        (sub / f"img{i:04d}.png").write_bytes(image_bytes(i))

    first = _kill_after(_ingest(lib, data), data, at_least=60)
    second = _kill_after(_ingest(lib, data), data, at_least=first + 100)
    assert first < second < FILES

    last = _ingest(lib, data)
    out, err = last.communicate(timeout=300)
    assert last.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["indexed"] + summary["unchanged"] == FILES
    assert summary["failed"] == summary["quarantined"] == 0
    # It resumed: what the killed runs had journaled was not redone.
    assert summary["unchanged"] >= second and summary["indexed"] <= FILES - second

    meta = json.loads((data / "mmsearch.json").read_text())
    store = EdgeStore(data, CollectionSchema(meta["bundle_id"], int(meta["dim"])))
    try:
        assert store.count() == FILES
        hashes: Counter[str] = Counter()
        offset = None
        while True:
            page, offset = store.scroll(limit=256, offset=offset)
            hashes.update(str(p.payload["content_hash"]) for p in page)
            if offset is None:
                break
    finally:
        store.close()
    assert len(hashes) == FILES and max(hashes.values()) == 1
    assert _journaled(data) == FILES

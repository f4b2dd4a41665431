"""The remote-ingest spool: a live stream's folder is kept, a killed server's is removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from server.ingest_spool import ORPHAN_SECONDS, SPOOL_PREFIX, open_spool, spool_file

_HOLD = """
import sys, time
from pathlib import Path
from server.ingest_spool import open_spool
path, lock = open_spool(Path(sys.argv[1]))
print(path, flush=True)
time.sleep(600)
"""


def test_orphaned_spools_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)], cwd=root, stdout=subprocess.PIPE, text=True
    )
    killed = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)], cwd=root, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and killed.stdout is not None
        live, dead = Path(holder.stdout.readline().strip()), Path(killed.stdout.readline().strip())
        (dead / "7.jpg").write_bytes(b"left behind")
        killed.kill()
        killed.wait()
        young = tmp_path / f"{SPOOL_PREFIX}young"  # no lock yet: being created right now
        young.mkdir()
        stale = tmp_path / f"{SPOOL_PREFIX}stale"  # no lock, long ago: a server killed mid-creation
        stale.mkdir()
        old = time.time() - 2 * ORPHAN_SECONDS
        os.utime(stale, (old, old))

        mine, lock = open_spool(tmp_path)
        try:
            left = {p.name for p in tmp_path.iterdir()}
            assert left == {live.name, mine.name, young.name}
            # Within one process too, a live stream's folder is never taken for an orphan.
            other, other_lock = open_spool(tmp_path)
            assert mine.exists() and other != mine
            other_lock.close()
        finally:
            lock.close()
    finally:
        holder.kill()
        holder.wait()


def test_spool_files_keep_only_a_plain_extension(tmp_path: Path) -> None:
    assert spool_file(tmp_path, 3, "/photos/Beach.JPG") == tmp_path / "3.jpg"
    assert spool_file(tmp_path, 4, "/x/../../etc/passwd") == tmp_path / "4"
    assert spool_file(tmp_path, 5, "/x/clip.m$4v") == tmp_path / "5"
    assert spool_file(tmp_path, 6, "/x/noext") == tmp_path / "6"

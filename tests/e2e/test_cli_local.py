"""The CLI on the embedded store without a server: ingest, search and stats open the store directly."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import run_cli
from tests.media import TEXTS, write_library


def test_local_ingest_search_stats(tmp_path: Path) -> None:
    paths = write_library(tmp_path / "lib", n_images=3)
    data = str(tmp_path / "data")
    proc = run_cli("ingest", str(tmp_path / "lib"), "--data", data, "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    counts = (summary["indexed"], summary["quarantined"], summary["failed"], summary["skipped"])
    assert counts == (3 + len(TEXTS) + 1, 2, 0, 1)

    proc = run_cli("search", "--data", data, "--image", str(paths["img2"]), "--top-k", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["source"] == str(paths["img2"])

    proc = run_cli("stats", "--data", data, "--json")
    stats = json.loads(proc.stdout)
    assert stats["by_modality"]["image"] == 3 and stats["store"] == "edge"

    proc = run_cli("search", "--data", data, "--text", "x", "--filter", "year>>3", "--json")
    assert proc.returncode == 1 and "malformed filter" in proc.stderr

"""`mmsearch ingest` on the local store: the JSON summary, --sync, manifests with indexed fields
that `search --filter` uses, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

from indexer.quarantine import read_report
from tests.e2e.conftest import run_cli
from tests.media import image_bytes

KEYS = {
    "indexed",
    "unchanged",
    "skipped",
    "failed",
    "quarantined",
    "items_per_s",
    "quarantine_file",
    "removed",
}


def test_folder_ingest_json_sync_and_report(tmp_path: Path) -> None:
    lib, data = tmp_path / "lib", str(tmp_path / "data")
    lib.mkdir()
    for i in range(4):
        (lib / f"p{i}.png").write_bytes(image_bytes(i))
    (lib / "note.txt").write_text("a note about cats")
    (lib / "zero.jpg").write_bytes(b"")
    proc = run_cli("ingest", str(lib), "--data", data, "--json", "--no-progress", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert set(summary) >= KEYS
    assert (summary["indexed"], summary["quarantined"], summary["failed"]) == (5, 1, 0)
    assert summary["items_per_s"] > 0
    (line,) = read_report(summary["quarantine_file"])
    assert line["path"] == str(lib / "zero.jpg") and line["stage"] == "read"

    (lib / "p3.png").unlink()
    proc = run_cli("ingest", str(lib), "--data", data, "--sync", "--no-progress", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert "indexed 0, unchanged 4" in proc.stdout and "removed 1" in proc.stdout
    stats = json.loads(run_cli("stats", "--data", data, "--json").stdout)
    assert stats["points"] == 4


def test_manifest_ingest_with_an_indexed_field_and_a_filtered_search(tmp_path: Path) -> None:
    lib, data = tmp_path / "lib", str(tmp_path / "data")
    lib.mkdir()
    rows = []
    for i in range(3):
        (lib / f"p{i}.png").write_bytes(image_bytes(i))
        rows.append(
            {"path": f"p{i}.png", "caption": f"picture {i}", "tags": ["even" if i % 2 == 0 else "odd"]}
        )
    rows.append({"path": "missing.png"})
    (lib / "library.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    proc = run_cli(
        "ingest", "--manifest", str(lib / "library.jsonl"), "--index-field", "tags", "--data", data,
        "--json", "--no-progress", "--workers", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["indexed"], summary["failed"]) == (3, 1)
    assert (
        summary["errors"][0]["path"] == "library.jsonl:4" and "missing file" in summary["errors"][0]["reason"]
    )

    proc = run_cli("search", "--data", data, "--text", "picture", "--filter", "tags=even", "--json")
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)["results"]
    assert sorted(Path(h["source"]).name for h in hits) == ["p0.png", "p2.png"]


def test_bad_paths_and_manifests_fail_with_a_message(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    proc = run_cli("ingest", str(tmp_path / "nowhere"), "--data", data, "--no-progress")
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n" * 5)
    proc = run_cli("ingest", "--manifest", str(bad), "--max-errors", "2", "--data", data, "--no-progress")
    assert proc.returncode == 1 and "more than 2 rows could not be used" in proc.stderr

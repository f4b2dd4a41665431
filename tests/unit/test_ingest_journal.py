"""The ingest journal, the walk, and the light modules the remote client imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from indexer.ingest import library_sources
from indexer.journal import Journal, JournalEntry, JournalError, SetAside, metadata_digest
from indexer.manifest import Rejected
from indexer.sources import SourceFile, Stage
from indexer.walk import WalkStats, count_media, walk_sources

ROOT = Path(__file__).resolve().parents[2]


def _entry(
    source: str, content: str, ids: tuple[str, ...], size: int = 10, mtime: float = 1.5
) -> JournalEntry:
    return JournalEntry(source, size, mtime, "", content, "b1", ids)


def test_unchanged_by_size_mtime_metadata_and_bundle(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite", bundle_id="b1") as j:
        j.record([_entry("/a.png", "h1", ("p1",))])
        assert j.is_unchanged("/a.png", 10, 1.5)
        assert not j.is_unchanged("/a.png", 11, 1.5) and not j.is_unchanged("/a.png", 10, 2.0)
        assert not j.is_unchanged("/a.png", 10, 1.5, {"caption": "new"})
        assert not j.is_unchanged("/b.png", 10, 1.5)
    # Another namespace or another bundle sees nothing; the file survives a reopen.
    assert not Journal(tmp_path / "j.sqlite", namespace="acme").is_unchanged("/a.png", 10, 1.5)
    assert not Journal(tmp_path / "j.sqlite", bundle_id="b2").is_unchanged("/a.png", 10, 1.5)
    assert Journal(tmp_path / "j.sqlite").entry("/a.png") == _entry("/a.png", "h1", ("p1",))


def test_stale_points_are_purgeable_only_once_no_source_holds_their_content(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as j:
        j.record([_entry("/a", "X", ("x",)), _entry("/b", "X", ("x",))])
        j.record([_entry("/a", "Y", ("y",))], stale=[("X", ("x",))])
        assert j.purgeable() == []  # /b still holds X
        j.retire([_entry("/b", "X", ("x",))])
        assert j.purgeable() == [("X", ("x",)), ("X", ("x",))]
        j.drop_stale(["X"])
        assert j.purgeable() == [] and j.count() == 1


def test_missing_sources_under_a_prefix(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as j:
        j.record([_entry(f"/lib/{n}", n, (n,)) for n in ("a", "b", "c")] + [_entry("/other/d", "d", ("d",))])
        j.begin_seen()
        j.mark_seen(["/lib/b"])
        assert [e.source for e in j.missing("/lib/")] == ["/lib/a", "/lib/c"]


def test_set_aside_until_the_file_changes(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as j:
        j.record([], quarantined=[SetAside("/bad.png", 5, 1.0, metadata_digest({}), "corrupt")])
        assert j.set_aside("/bad.png", 5, 1.0, {}) == "corrupt"
        assert j.set_aside("/bad.png", 6, 1.0, {}) is None
        j.record([_entry("/bad.png", "h", ("p",), size=6)])  # fixed and indexed: forgotten
        assert j.set_aside("/bad.png", 5, 1.0, {}) is None


def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    (tmp_path / "j.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(JournalError, match="cannot be opened"):
        Journal(tmp_path / "j.sqlite")


def test_walk_is_sorted_depth_first_and_skips_hidden_and_unsupported(tmp_path: Path) -> None:
    for rel in ("b/2.txt", "b/1.png", "a.txt", "c/.hidden.txt", ".git/x.txt", "notes.bin", "c/d/e.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    stats = WalkStats()
    found = list(walk_sources(tmp_path, stats))
    names = [os.path.relpath(f.source, tmp_path) for f in found]
    assert names == ["a.txt", "dangling.jpg", "b/1.png", "b/2.txt", "c/d/e.mp4"]
    assert stats.skipped == 2  # notes.bin, c/.hidden.txt
    assert found[1].size == -1  # the pipeline reports why it cannot be read
    assert count_media(tmp_path) == len(found)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(walk_sources(tmp_path / "nowhere"))


def test_an_unlistable_folder_is_reported_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.txt").write_text("a")
    (tmp_path / "locked").mkdir()
    real = os.scandir

    def scandir(path: str | os.PathLike[str]) -> object:
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    items = list(library_sources(tmp_path))
    assert [type(i) for i in items] == [SourceFile, Rejected]
    rejected = items[1]
    assert isinstance(rejected, Rejected) and rejected.stage == Stage.WALK
    assert rejected.source.endswith("locked") and "Permission denied" in rejected.reason


def test_the_client_side_modules_load_no_model_code() -> None:
    code = (
        "import json, sys\n"
        "import indexer.ingest, indexer.walk, indexer.manifest, indexer.journal, indexer.quarantine, "
        "indexer.progress, indexer.sources, indexer.ingest_flow\n"
        "print(json.dumps(sorted(m for m in ('torch', 'open_clip', 'qdrant_edge', 'qdrant_client') "
        "if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []

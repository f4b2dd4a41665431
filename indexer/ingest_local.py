"""Local bulk ingest: a folder or a manifest through the pipeline into a store, with its journal,
quarantine report and progress bar. The CLI's `mmsearch ingest` without `--server`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from encoders.embed import Embedder
from indexer.ingest import library_sources
from indexer.journal import Journal
from indexer.manifest import DEFAULT_MAX_ERRORS, ManifestReader
from indexer.pipeline import IngestPipeline, PipelineOptions
from indexer.progress import IngestSummary, ProgressBar
from indexer.quarantine import Quarantine
from indexer.schema import DEFAULT_NAMESPACE
from indexer.store import VectorStore
from indexer.walk import WalkStats, count_in_background, library_root

JOURNAL_FILE = "ingest-journal.sqlite"
QUARANTINE_DIR = "quarantine"


@dataclass(frozen=True)
class IngestRequest:
    path: Path | None = None  # a folder (or one file)
    manifest: Path | None = None  # or a manifest
    sync: bool = False  # also remove the points of files gone from the folder
    journal: Path | None = None  # None: no journal (every file is read and hashed again)
    quarantine: Path | None = None  # the report of what was set aside
    max_errors: int = DEFAULT_MAX_ERRORS  # bad manifest rows before the run stops
    progress: bool = True

    def __post_init__(self) -> None:
        if (self.path is None) == (self.manifest is None):
            raise ValueError("ingest a folder or a manifest (--manifest), one of the two")
        if self.sync and self.path is None:
            raise ValueError("--sync needs a folder: it removes what is no longer in it")
        if self.sync and self.journal is None:
            raise ValueError("--sync needs the ingest journal: it says what was indexed before")


def default_journal(data_dir: Path, collection: str | None = None) -> Path:
    """Beside the embedded store; one per collection for a Qdrant server."""
    return data_dir / (JOURNAL_FILE if collection is None else f"ingest-journal-{collection}.sqlite")


def default_quarantine(data_dir: Path) -> Path:
    """A report per run, named by its start time."""
    return data_dir / QUARANTINE_DIR / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.jsonl"


def ingest_library(
    embedder: Embedder,
    store: VectorStore,
    request: IngestRequest,
    options: PipelineOptions | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
) -> IngestSummary:
    """Run one ingest. Raises FileNotFoundError / PermissionError for a path that cannot be
    walked, ManifestError past the bad-row budget, IngestAborted when writing fails."""
    field_kinds = {f.name: f.kind for f in (options.index_fields if options else ())}
    stats = WalkStats()
    root = library_root(request.path) if request.path is not None else None
    if request.sync and root is not None and not root.is_dir():
        raise ValueError(f"--sync needs a folder, and {root} is a file")
    sources = library_sources(
        root, manifest=request.manifest, stats=stats, max_errors=request.max_errors, field_kinds=field_kinds
    )
    journal = Journal(request.journal, namespace=namespace) if request.journal else None
    quarantine = Quarantine(request.quarantine) if request.quarantine else None
    bar = ProgressBar(enabled=request.progress)
    try:
        with IngestPipeline(
            embedder, store, options, namespace=namespace, journal=journal, quarantine=quarantine
        ) as pipeline:
            total = None
            if root is not None:
                count_in_background(root, pipeline.set_total)
            elif request.manifest is not None:
                total = _manifest_rows(request.manifest)
            prefix = None
            if request.sync and root is not None:
                prefix = os.path.join(str(root), "")  # "/lib/" (and "/" for the root itself)
            summary = pipeline.run(sources, progress=bar, sync_prefix=prefix, total=total)
    finally:
        bar.close()
        if journal is not None:
            journal.close()
        if quarantine is not None:
            quarantine.close()
    summary.skipped = stats.skipped
    return summary


def _manifest_rows(path: Path) -> int | None:
    try:
        return ManifestReader(path).count()
    except OSError:
        return None

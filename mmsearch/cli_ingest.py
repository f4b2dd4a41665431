"""`mmsearch ingest` on the local store: the flags of the bulk ingest pipeline and its run."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from indexer.progress import IngestSummary

# Failures printed under the summary; the quarantine report lists every one.
SHOWN_ERRORS = 20


def add_local_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, help="a JSONL or CSV file naming the items and their metadata")
    p.add_argument("--sync", action="store_true", help="also remove the points of files gone from the folder")
    p.add_argument(
        "--quarantine", type=Path, help="report of the files set aside (default DATA/quarantine/*.jsonl)"
    )
    p.add_argument("--journal", type=Path, help="ingest journal (default DATA/ingest-journal.sqlite)")
    p.add_argument("--no-journal", action="store_true", help="re-read and re-hash every file")
    p.add_argument(
        "--index-field",
        action="append",
        default=[],
        metavar="NAME[:TYPE]",
        help="give a metadata field a payload index: keyword (default), integer, float, bool, text",
    )
    p.add_argument("--workers", type=int, help="decoder worker processes (default: one per core)")
    p.add_argument(
        "--max-errors", type=int, default=100, help="bad manifest rows before stopping (default 100)"
    )
    p.add_argument("--exact-images", action="store_true", help="decode JPEGs at full scale before resizing")
    p.add_argument(
        "--retry-quarantined",
        action="store_true",
        help="decode again files an earlier run set aside, unchanged since",
    )


def run_local(args: argparse.Namespace) -> IngestSummary:
    """Ingest args.path or args.manifest into the local (or --qdrant-url) store."""
    from indexer.manifest import IndexField, ManifestReader
    from indexer.walk import library_root

    # Bad input is refused before the model loads.
    if args.path is not None:
        library_root(args.path)
    if args.manifest is not None:
        ManifestReader(args.manifest)
    fields = tuple(IndexField.parse(f) for f in args.index_field)

    from indexer.ingest_local import IngestRequest, default_journal, default_quarantine, ingest_library
    from indexer.pipeline import PipelineOptions
    from mmsearch.settings import server_config
    from server.services import build_services

    config = server_config(args)
    journal = None
    if not args.no_journal:
        journal = args.journal or default_journal(
            config.data_dir, config.collection if config.qdrant_url else None
        )
    request = IngestRequest(
        path=args.path,
        manifest=args.manifest,
        sync=args.sync,
        journal=journal,
        quarantine=args.quarantine or default_quarantine(config.data_dir),
        max_errors=args.max_errors,
        progress=not args.no_progress,
    )
    options = PipelineOptions(
        decode_workers=args.workers or os.cpu_count() or 1,
        batch_size=args.batch_size or PipelineOptions.batch_size,
        jpeg_draft=not args.exact_images,
        index_fields=fields,
        max_payload_bytes=config.max_item_payload_bytes,
        retry_quarantined=args.retry_quarantined,
    )
    services = build_services(config)
    try:
        summary = ingest_library(services.embedder, services.store, request, options)
        services.store.optimize()
    except BaseException:
        # The first error is the one to report (closing may fail the same way on a full disk).
        with contextlib.suppress(Exception):
            services.close()
        raise
    services.close()
    return summary


def print_summary(summary: IngestSummary) -> None:
    print(summary.text())
    for err in summary.errors[:SHOWN_ERRORS]:
        print(f"  {err.status}: {err.path}: {err.reason}")
    more = summary.failed + summary.quarantined - min(len(summary.errors), SHOWN_ERRORS)
    if more > 0:
        print(f"  ... and {more} more (see the report)")

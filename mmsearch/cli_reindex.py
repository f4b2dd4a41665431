"""`mmsearch reindex`: rebuild the index under another bundle and switch to it without downtime.

With --server the reindex runs inside that server (the one that owns the store), which keeps
answering until the switch; without, it runs here on the --data directory or the --qdrant-url
collection (with no server writing to it meanwhile, or through one: see README). `--drop-old`
without `--bundle` drops the collections that are not live.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from mmsearch.v1 import search_pb2 as pb

SHOWN_MISSING = 20


def add_parser(sub: Any, add_store_flags: Any, add_client_flags: Any) -> None:
    p = sub.add_parser("reindex", help="rebuild the index under another bundle, then switch to it atomically")
    p.add_argument("--server", help="HOST:PORT of the server that owns the store: reindex inside it")
    add_client_flags(p)
    add_store_flags(p)  # --bundle here is the NEW bundle
    p.add_argument(
        "--allow-missing", action="store_true", help="switch even though some items cannot be rebuilt"
    )
    p.add_argument("--drop-old", action="store_true", help="drop the old collection after the switch")
    p.add_argument("--workers", type=int, help="decoder worker processes (local; default one per core)")
    p.add_argument("--report", type=Path, help="write the items that could not be rebuilt here (JSONL)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    if not args.bundle:
        if not args.drop_old:
            raise ValueError("reindex needs --bundle NEW (or --drop-old alone to drop old collections)")
        if args.server:
            raise ValueError("--drop-old alone runs on the store (--data / --qdrant-url), not --server")
        return _drop_only(args)
    progress = None if args.no_progress else _ProgressLine()
    report = _remote(args, progress) if args.server else _local(args, progress)
    _print(report, args)
    return 0 if report.switched else 1


def _remote(args: argparse.Namespace, progress: _ProgressLine | None) -> pb.ReindexReport:
    from mmsearch.cli_auth import connect

    with connect(args) as client:
        stream = client.reindex(args.bundle, allow_missing=args.allow_missing, drop_old=args.drop_old)
        for response in stream:
            if response.HasField("report"):
                return response.report
            if progress is not None:
                progress(response.progress)
    raise RuntimeError("the server ended the reindex stream without a report")


def _local(args: argparse.Namespace, progress: _ProgressLine | None) -> pb.ReindexReport:
    import os

    from encoders.bundle import load_bundle
    from encoders.decode import MediaDecoder
    from encoders.embed import Embedder
    from encoders.encoder import Encoder
    from indexer.collections import open_collections
    from indexer.pipeline import PipelineOptions
    from indexer.reindex import Reindexer, ReindexOptions, drop_old
    from indexer.schema import CollectionSchema
    from mmsearch.settings import server_config
    from server.reindex import progress_to_proto, report_to_proto

    config = server_config(args)
    collections = _collections(config, open_collections)
    try:
        name = collections.live()
        meta = collections.metadata(name)
        if not meta.get("bundle_id"):
            raise ValueError(f"no index to reindex at {config.qdrant_url or config.data_dir}")
        live = collections.open(name, CollectionSchema(str(meta["bundle_id"]), int(str(meta["dim"]))))
        bundle = load_bundle(args.bundle, config.device)
        encoder = Encoder(bundle)
        embedder = Embedder(encoder, MediaDecoder(sample_rate=encoder.decode_sample_rate))
        options = ReindexOptions(
            allow_missing=args.allow_missing,
            pipeline=PipelineOptions(
                decode_workers=args.workers or os.cpu_count() or 1,
                max_payload_bytes=config.max_item_payload_bytes,
            ),
        )
        show = None if progress is None else (lambda p: progress(progress_to_proto(p)))
        try:
            r = Reindexer(
                collections, live, embedder, bundle_ref=bundle.spec.name, options=options, on_progress=show
            )
            try:
                r.build()
                r.settle()
                r.switch()
            finally:
                r.close()
        finally:
            embedder.close()
            live.close()
        if r.report.switched and args.drop_old:
            r.report.dropped = drop_old(collections)
        return report_to_proto(r.report)
    finally:
        collections.close()


def _collections(config: Any, open_collections: Any) -> Any:
    return open_collections(
        data_dir=config.data_dir,
        qdrant_url=config.qdrant_url,
        api_key=config.qdrant_api_key,
        collection=config.collection,
        shards=config.qdrant_shards,
        replication=config.qdrant_replication,
        write_consistency=config.qdrant_write_consistency,
    )


def _drop_only(args: argparse.Namespace) -> int:
    from indexer.collections import open_collections
    from indexer.reindex import drop_old
    from mmsearch.settings import server_config

    collections = _collections(server_config(args), open_collections)
    try:
        dropped = drop_old(collections)
    finally:
        collections.close()
    print(json.dumps({"dropped": dropped}) if args.json else f"dropped: {', '.join(dropped) or 'nothing'}")
    return 0


def _print(report: pb.ReindexReport, args: argparse.Namespace) -> None:
    if args.report is not None:
        _write_missing(args.report, report.missing)
    if args.json:
        print(json.dumps(json_format.MessageToDict(report, preserving_proto_field_name=True)))
        return
    print(
        f"{_name(report.old_collection)} ({report.old_bundle_id}) -> {_name(report.new_collection)} "
        f"({report.new_bundle_id}): "
        f"{report.items} items, indexed {report.indexed}, unchanged {report.unchanged}, "
        f"missing {report.missing_count}, changed {len(report.changed)}, removed {report.removed} "
        f"({report.points} points, {report.seconds:.1f} s)"
    )
    for m in report.missing[:SHOWN_MISSING]:
        print(f"  missing: {m.source or m.media_id}: {m.reason}")
    if report.missing_count > SHOWN_MISSING:
        print(
            f"  ... and {report.missing_count - SHOWN_MISSING} more"
            + (" (see --report)" if args.report else "")
        )
    for source in report.changed[:SHOWN_MISSING]:
        print(f"  changed since indexed: {source}")
    if report.switched:
        print(
            f"switched: queries now use {report.new_collection}"
            + (
                f"; dropped {', '.join(_name(d) for d in report.dropped)}"
                if report.dropped
                else f"; {_name(report.old_collection)} is kept until --drop-old"
            )
        )
    else:
        print(f"not switched: {report.refused}")


def _name(collection: str) -> str:
    # indexer.edge_layout.ROOT: the collection stored in the data directory itself.
    return "the data directory's first collection" if collection == "." else collection


def _write_missing(path: Path, items: Iterable[pb.MissingItem]) -> None:
    with open(path, "w") as f:
        for m in items:
            f.write(json.dumps(json_format.MessageToDict(m, preserving_proto_field_name=True)) + "\n")


class _ProgressLine:
    """One line on stderr per phase change, and at most one a second within a phase."""

    def __init__(self) -> None:
        self._phase = ""
        self._last = 0.0

    def __call__(self, p: pb.ReindexProgress) -> None:
        now = time.monotonic()
        if p.phase == self._phase and now - self._last < 1.0:
            return
        self._phase, self._last = p.phase, now
        total = f"/{p.items}" if p.items and p.phase == "build" else ""
        print(
            f"reindex {p.phase}: {p.done}{total} items, indexed {p.indexed}, unchanged {p.unchanged}, "
            f"missing {p.missing} ({p.elapsed:.0f} s)",
            file=sys.stderr,
            flush=True,
        )

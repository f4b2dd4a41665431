"""`mmsearch ingest PATH --ray [ADDRESS]`: the CLI's Ray branch (indexer.ray_ingest).

Where the points go: a running server's index through its WritePoints (`--server HOST:PORT`,
the server owning an embedded store), a Qdrant server or cluster (`--qdrant-url`), or else the
embedded store in `--data` (when no server holds it). Ray and the model code are imported only
when the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from encoders.embed import Embedder
    from indexer.progress import IngestSummary
    from indexer.ray_ingest import IngestTarget
    from indexer.schema import PointRecord
    from mmsearch.client import MMSearchClient
    from server.config import ServerConfig


NO_FIELD_INDEX = (
    "--index-field cannot be set through WritePoints: give it to an ingest without --ray, or write "
    "to the Qdrant server directly (--qdrant-url)"
)


def add_ray_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the stages on a Ray cluster (ADDRESS, $RAY_ADDRESS, or a local Ray); put PATH first",
    )
    p.add_argument("--ray-actors", type=int, help="embed actors, one model each (default: one per GPU, or 1)")


class ServerTarget:
    """A server's index, written through its WritePoints as the caller's tenant."""

    def __init__(self, client: MMSearchClient, bundle_id: str) -> None:
        from mmsearch.point_sink import GrpcPointSink

        self.client = client
        self.sink = GrpcPointSink(client, bundle_id)  # checks the bundle: BundleMismatchError
        self.bundle_id, self.namespace = bundle_id, self.sink.namespace

    def upsert(self, points: Sequence[PointRecord]) -> None:
        self.sink.write(points)

    def delete(self, ids: Sequence[str]) -> None:
        try:
            self.client.delete(ids)
        except grpc.RpcError as exc:
            if not isinstance(exc, grpc.Call) or exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            # Delete refuses a call naming any id it does not hold (another writer's delete, or
            # the server's own clean-up of a re-used caller id got there first): one at a time.
            for i in ids:
                try:
                    self.client.delete([i])
                except grpc.RpcError as one:
                    if not isinstance(one, grpc.Call) or one.code() != grpc.StatusCode.NOT_FOUND:
                        raise

    def stored(self, ids: Sequence[str]) -> dict[str, Mapping[str, Any]] | None:
        # Get answers hits, not whole payloads (no point_ids): the journal alone says what is
        # indexed, and an item stored but not journaled is written again (the same ids).
        return None

    def count(self) -> int:
        return int(self.client.stats().points)

    def create_field_index(self, key: str, kind: str) -> None:
        raise ValueError(NO_FIELD_INDEX)


@dataclass(frozen=True)
class ServerEmbedder:
    """Builds the ingest Embedder as a server does (server.services.build_embedder: the same
    decoder caps, so the same frames and windows), on a Ray worker. Pickled to every worker."""

    config: ServerConfig

    def __call__(self, device: str | None) -> Embedder:
        from encoders.bundle import load_bundle
        from server.services import build_embedder

        embedder, query_decoder = build_embedder(load_bundle(self.config.bundle, device), self.config)
        query_decoder.close()
        return embedder


def run_ray(args: argparse.Namespace) -> IngestSummary:
    """Ingest args.path or args.manifest with the stages on Ray."""
    from indexer.manifest import IndexField, ManifestReader
    from indexer.walk import library_root

    if args.path is not None:
        library_root(args.path)
    if args.manifest is not None:
        ManifestReader(args.manifest)
    if args.ray_actors is not None and args.ray_actors < 1:
        raise ValueError(f"--ray-actors must be at least 1, got {args.ray_actors}")
    fields = tuple(IndexField.parse(f) for f in args.index_field)
    if fields and args.server:
        raise ValueError(NO_FIELD_INDEX)

    from encoders.bundle import load_bundle
    from indexer.ingest_local import IngestRequest, default_journal, default_quarantine
    from indexer.pipeline import PipelineOptions
    from indexer.ray_ingest import RayOptions, import_ray, ray_ingest
    from mmsearch.settings import server_config

    import_ray()  # a missing extra is reported before the model loads
    config = server_config(args)
    if Path(config.bundle).is_dir():  # the workers may run elsewhere: no relative paths
        config = replace(config, bundle=str(Path(config.bundle).resolve()))
    # Loaded once here, on the CPU: the bundle's id and size, and the target refuses another
    # bundle before any worker starts.
    bundle = load_bundle(config.bundle, "cpu")
    model_bytes = sum(t.numel() * t.element_size() for t in bundle.model.state_dict().values())
    if bundle.audio is not None:
        model_bytes += sum(t.numel() * t.element_size() for t in bundle.audio.state_dict().values())
    options = PipelineOptions(
        batch_size=args.batch_size or PipelineOptions.batch_size,
        jpeg_draft=not args.exact_images,
        index_fields=fields,
        max_payload_bytes=config.max_item_payload_bytes,
        retry_quarantined=args.retry_quarantined,
    )
    ray_options = RayOptions(
        address=args.ray or None,
        actors=args.ray_actors,
        decode_workers=args.workers or RayOptions.decode_workers,
    )
    # Workers get the settings without the Qdrant key: they write nothing.
    make_embedder = ServerEmbedder(replace(config, qdrant_api_key=None))
    with _target(args, config, bundle.bundle_id, bundle.embed_dim) as (target, journal_name):
        journal = None
        if not args.no_journal:
            journal = args.journal or default_journal(config.data_dir, journal_name)
        request = IngestRequest(
            path=args.path,
            manifest=args.manifest,
            sync=args.sync,
            journal=journal,
            quarantine=args.quarantine or default_quarantine(config.data_dir),
            max_errors=args.max_errors,
            progress=not args.no_progress,
        )
        return ray_ingest(
            make_embedder,
            target,
            request,
            options,
            ray_options,
            device=config.device,
            model_bytes=model_bytes,
        )


@contextlib.contextmanager
def _target(
    args: argparse.Namespace, config: ServerConfig, bundle_id: str, dim: int
) -> Iterator[tuple[IngestTarget, str | None]]:
    """The ingest target and the name of its journal (None: the embedded store's own)."""
    if args.server:
        from mmsearch.cli_auth import connect

        with connect(args) as client:
            # A journal per server: the same library can be ingested into several.
            yield ServerTarget(client, bundle_id), "server-" + re.sub(r"[^A-Za-z0-9.-]+", "_", args.server)
        return
    from indexer.open import open_store
    from indexer.ray_ingest import StoreTarget
    from indexer.schema import CollectionSchema

    store = open_store(
        CollectionSchema(bundle_id=bundle_id, dim=dim),
        data_dir=config.data_dir,
        qdrant_url=config.qdrant_url,
        api_key=config.qdrant_api_key,
        collection=config.collection,
        shards=config.qdrant_shards,
        replication=config.qdrant_replication,
        write_consistency=config.qdrant_write_consistency,
    )
    try:
        yield StoreTarget(store), config.collection if config.qdrant_url else None
        store.optimize()
    finally:
        store.close()

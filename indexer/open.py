"""Open the configured store: the embedded engine by default, a Qdrant server when a URL is set."""

from __future__ import annotations

from pathlib import Path

from indexer.edge_store import EdgeStore
from indexer.qdrant_store import QdrantStore
from indexer.schema import DEFAULT_COLLECTION, CollectionSchema
from indexer.store import VectorStore


def open_store(
    schema: CollectionSchema,
    *,
    data_dir: str | Path | None = None,
    qdrant_url: str | None = None,
    api_key: str | None = None,
    collection: str = DEFAULT_COLLECTION,
    shards: int | None = None,
    replication: int | None = None,
    write_consistency: int | None = None,
) -> VectorStore:
    schema = CollectionSchema(bundle_id=schema.bundle_id, dim=schema.dim, name=collection)
    if qdrant_url:
        return QdrantStore(
            qdrant_url,
            schema,
            api_key=api_key,
            shard_number=shards,
            replication_factor=replication,
            write_consistency_factor=write_consistency,
        )
    if data_dir is None:
        raise ValueError("either data_dir (embedded store) or qdrant_url (Qdrant server) is required")
    return EdgeStore(data_dir, schema)

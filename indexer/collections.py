"""The collections of one deployment and the switch between them, for either store.

A reindex builds a new collection beside the live one, then makes it live in one atomic step:
the embedded store replaces its pointer file (indexer.edge_layout), a Qdrant deployment moves its
live alias (indexer.qdrant_aliases). The old collection stays until it is dropped.
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from qdrant_client import QdrantClient, models

from indexer import edge_layout
from indexer.edge_store import LOCK_FILE, SHARD_DIR, EdgeStore
from indexer.qdrant_aliases import collection_for, live_alias, live_collection
from indexer.qdrant_store import QdrantStore
from indexer.schema import CollectionSchema
from indexer.store import StoreError, StoreLockedError, VectorStore

# Collection metadata key: how to load the bundle that built the collection (a name or a path),
# so a replica that sees the switch can load it (server.reindex).
BUNDLE_REF = "bundle"


class Collections(Protocol):
    """The collections of one data directory or one configured Qdrant collection name."""

    kind: str

    def live(self) -> str:
        """The name of the collection that serves queries."""
        ...

    def names(self) -> list[str]: ...

    def name_for(self, bundle_id: str) -> str:
        """The collection a reindex into `bundle_id` builds (and resumes)."""
        ...

    def metadata(self, name: str) -> Mapping[str, Any]:
        """What the collection records about itself: bundle_id, dim, bundle (BUNDLE_REF)."""
        ...

    def open(self, name: str, schema: CollectionSchema, *, bundle_ref: str | None = None) -> VectorStore:
        """Open (or create) collection `name`; raises BundleMismatchError for another bundle's."""
        ...

    def switch(self, name: str) -> None:
        """Make `name` the live collection, atomically."""
        ...

    def drop(self, name: str) -> None:
        """Delete a collection that is not live."""
        ...

    def close(self) -> None: ...


class EdgeCollections:
    """The collections of an embedded store's data directory."""

    kind = "edge"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def live(self) -> str:
        try:
            return edge_layout.live_collection(self.root)
        except edge_layout.LayoutError as exc:
            raise StoreError(str(exc)) from None

    def names(self) -> list[str]:
        return edge_layout.collection_names(self.root)

    def name_for(self, bundle_id: str) -> str:
        return edge_layout.check_name(bundle_id)

    def metadata(self, name: str) -> Mapping[str, Any]:
        return edge_layout.read_metadata(self.root, name)

    def open(self, name: str, schema: CollectionSchema, *, bundle_ref: str | None = None) -> VectorStore:
        extra = {BUNDLE_REF: bundle_ref} if bundle_ref else None
        return EdgeStore(self.root, schema, collection=name, metadata=extra)

    def switch(self, name: str) -> None:
        try:
            edge_layout.set_live(self.root, name)
        except edge_layout.LayoutError as exc:
            raise StoreError(str(exc)) from None

    def drop(self, name: str) -> None:
        if name == self.live():
            raise StoreError(f"collection {name!r} is live: switch to another before dropping it")
        folder = edge_layout.collection_dir(self.root, name)
        if not (folder / edge_layout.SCHEMA_FILE).is_file():
            raise StoreError(f"{self.root} has no collection {name!r}")
        # Its lock, taken and kept while deleting: a process still serving it keeps it.
        with open(folder / LOCK_FILE, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreLockedError(
                    f"collection {name!r} in {self.root} is open in another process; stop it first"
                ) from None
            # Metadata first: a drop cut short leaves no half collection that still looks whole.
            (folder / edge_layout.SCHEMA_FILE).unlink()
            shutil.rmtree(folder / SHARD_DIR, ignore_errors=True)
        if name != edge_layout.ROOT:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        return None


class QdrantCollections:
    """The collections behind one configured collection name on a Qdrant server or cluster."""

    kind = "qdrant"

    def __init__(
        self,
        url: str,
        name: str,
        *,
        api_key: str | None = None,
        client: QdrantClient | None = None,
        shards: int | None = None,
        replication: int | None = None,
        write_consistency: int | None = None,
    ) -> None:
        self.url, self.name, self.api_key = url, name, api_key
        self._owns_client = client is None
        if client is not None:
            self.client = client
        elif url == ":memory:":
            self.client = QdrantClient(location=":memory:")
        else:
            self.client = QdrantClient(url=url, api_key=api_key, prefer_grpc=True)
        self.shards, self.replication, self.write_consistency = shards, replication, write_consistency

    def live(self) -> str:
        return live_collection(self.client, self.name)

    def names(self) -> list[str]:
        prefix = self.name + "-"
        return sorted(
            c.name
            for c in self.client.get_collections().collections
            if c.name == self.name or (c.name.startswith(prefix) and c.name != live_alias(self.name))
        )

    def name_for(self, bundle_id: str) -> str:
        return collection_for(self.name, bundle_id)

    def metadata(self, name: str) -> Mapping[str, Any]:
        return dict(self.client.get_collection(name).config.metadata or {})

    def open(self, name: str, schema: CollectionSchema, *, bundle_ref: str | None = None) -> VectorStore:
        # A store of its own client, which it closes; but an in-process (":memory:") deployment
        # lives in one client, which every collection then shares.
        return QdrantStore(
            self.url,
            schema,
            api_key=self.api_key,
            client=self.client if self.url == ":memory:" else None,
            collection=name,
            metadata={BUNDLE_REF: bundle_ref} if bundle_ref else None,
            shard_number=self.shards,
            replication_factor=self.replication,
            write_consistency_factor=self.write_consistency,
        )

    def switch(self, name: str) -> None:
        if not self.client.collection_exists(name):
            raise StoreError(f"Qdrant has no collection {name!r} to switch to")
        alias = live_alias(self.name)
        ops: list[models.CreateAliasOperation | models.DeleteAliasOperation] = []
        if any(a.alias_name == alias for a in self.client.get_aliases().aliases):
            ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        ops.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=name, alias_name=alias)
            )
        )
        # One request: Qdrant applies the delete and the create together.
        self.client.update_collection_aliases(change_aliases_operations=ops)

    def drop(self, name: str) -> None:
        if name == self.live():
            raise StoreError(f"collection {name!r} is live: switch to another before dropping it")
        if name not in self.names():
            raise StoreError(f"{name!r} is not one of the collections of {self.name!r}")
        self.client.delete_collection(name)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


def open_collections(
    *,
    data_dir: str | Path | None = None,
    qdrant_url: str | None = None,
    api_key: str | None = None,
    collection: str = "mmsearch",
    shards: int | None = None,
    replication: int | None = None,
    write_consistency: int | None = None,
    client: QdrantClient | None = None,
) -> Collections:
    """The collections of the configured store (the same arguments as indexer.open.open_store)."""
    if qdrant_url:
        return QdrantCollections(
            qdrant_url,
            collection,
            api_key=api_key,
            client=client,
            shards=shards,
            replication=replication,
            write_consistency=write_consistency,
        )
    if data_dir is None:
        raise ValueError("either data_dir (embedded store) or qdrant_url (Qdrant server) is required")
    return EdgeCollections(data_dir)

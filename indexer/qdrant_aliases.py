"""Which Qdrant collection serves a configured collection name.

A deployment starts with one real collection named as configured (`mmsearch`). A reindex builds
`<name>-<bundle_id>` beside it and points the alias `<name>-live` at it, in one
`update_collection_aliases` call (Qdrant applies the delete and the create atomically). The
alias has a name of its own because Qdrant refuses an alias named like an existing collection:
the first collection keeps its name, so an existing deployment migrates without a rename or a
window without a collection, and stays readable (and kept) until it is dropped.

A store resolves the name once, when it opens, and then queries the physical collection it
checked the bundle of: a replica never searches a collection built by another bundle than the
one it embeds queries with. Replicas notice a switch by resolving again (server.reindex).
"""

from __future__ import annotations

from qdrant_client import QdrantClient

LIVE_SUFFIX = "-live"


def live_alias(name: str) -> str:
    return name + LIVE_SUFFIX


def collection_for(name: str, bundle_id: str) -> str:
    """The physical collection a reindex builds for `bundle_id` under the configured `name`."""
    return f"{name}-{bundle_id}"


def live_collection(client: QdrantClient, name: str) -> str:
    """The physical collection behind `name`: the live alias' target, else `name` itself."""
    alias = live_alias(name)
    for a in client.get_aliases().aliases:
        if a.alias_name == alias:
            return str(a.collection_name)
    return name

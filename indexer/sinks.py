"""Where an ingest writes finished points: a store in this process, or a server's `WritePoints`.

A writer that computes points elsewhere (a Ray ingest's encoder actors) hands them to a
PointSink. Every sink checks points as indexer.point_check does and writes them as the ingest
pipeline would: the same ids and payloads, an item's sentinel last, and the points an earlier
version of an item left behind (a caller id re-used for shorter content) removed once the new
version is written. mmsearch.point_sink has the sink that writes over gRPC. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from indexer.point_check import PointError, check_points
from indexer.schema import DEFAULT_NAMESPACE, Key, PointRecord
from indexer.store import BundleMismatchError, VectorStore
from indexer.tenancy import TenantStore, tenant_store


@dataclass(frozen=True)
class WriteResult:
    written: int  # points written
    removed: int = 0  # points of earlier versions of the written items, now deleted


class PointSink(Protocol):
    """Takes finished points of one bundle, in one id namespace."""

    bundle_id: str
    dim: int
    namespace: str

    def write(self, points: Sequence[PointRecord]) -> WriteResult:
        """Check and write `points` (all or none). Raises indexer.point_check.PointError for a
        malformed point, BundleMismatchError when the points' bundle is not the sink's."""
        ...

    def close(self) -> None: ...


class StoreSink:
    """Writes into a VectorStore of this process, as the tenant `namespace` (the default
    namespace's points carry no tenant; indexer.tenancy)."""

    def __init__(self, store: VectorStore, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        if isinstance(store, TenantStore) and store.tenant != namespace:
            raise ValueError(f"store is scoped to tenant {store.tenant!r}, not {namespace!r}")
        self.store = tenant_store(store, namespace)
        self.bundle_id = store.schema.bundle_id
        self.dim = store.schema.dim
        self.namespace = namespace

    def write(self, points: Sequence[PointRecord], *, bundle_id: str | None = None) -> WriteResult:
        """`bundle_id`: the bundle the writer embedded with, when it says so (WritePoints does)."""
        if bundle_id is not None and bundle_id != self.bundle_id:
            raise BundleMismatchError("the index", self.bundle_id, bundle_id)
        if not points:
            return WriteResult(0)
        check_points(points, bundle_id=self.bundle_id, dim=self.dim, namespace=self.namespace)
        sentinels = {p.id: p for p in points if Key.POINT_IDS in p.payload}
        stored = self.store.get(list(sentinels)) if sentinels else []
        batch_ids = {p.id for p in points}
        stale: list[str] = []
        for old in stored:
            keep = set(sentinels[old.id].payload[Key.POINT_IDS])
            stale += [i for i in old.payload.get(Key.POINT_IDS) or () if i not in keep]
        listed = {i for p in sentinels.values() for i in p.payload[Key.POINT_IDS]}
        self._check_listed(listed - batch_ids)
        self.store.upsert(points)
        if stale:
            self.store.delete(stale)
        return WriteResult(len(points), len(stale))

    def _check_listed(self, elsewhere: set[str]) -> None:
        # A sentinel says its item is whole: the points it lists must be written already (an
        # earlier write of the same run) or in this one, never still to come.
        if not elsewhere:
            return
        found = {p.id for p in self.store.get(sorted(elsewhere))}
        missing = sorted(elsewhere - found)
        if missing:
            raise PointError(
                f"a sentinel lists {len(missing)} point(s) that are neither in this write nor stored, "
                f"e.g. {missing[0]}: write an item's sentinel after its other points"
            )

    def close(self) -> None:
        return None

"""Resolving the ids a caller gives (point ids or the caller's own item ids) to stored points."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from indexer.filters import FilterSpec, Match
from indexer.schema import Key, StoredPoint
from indexer.store import VectorStore, matching_ids
from indexer.tenancy import tenant_store
from server.context import RequestContext
from server.errors import InvalidArgument, NotFound

# Point ids are UUIDs; caller ids are the caller's own keys. Neither needs more than this, and an
# id echoed in an error must not blow gRPC's metadata limit (16 KiB for a status message).
MAX_ID_CHARS = 256


class IdResolver:
    def __init__(self, store: VectorStore, *, max_ids: int) -> None:
        self.store = store
        self.max_ids = max_ids

    def resolve(self, ctx: RequestContext, raw: Sequence[str], *, field: str) -> list[str]:
        """Point ids for the given point ids or caller ids. Raises NotFound naming unknown ones."""
        if not raw:
            raise InvalidArgument(f"{field} is empty")
        if len(raw) > self.max_ids:
            raise InvalidArgument(
                f"{field} has {len(raw)} entries; at most {self.max_ids} (max_ids_per_call)"
            )
        for i, r in enumerate(raw):
            if len(r) > MAX_ID_CHARS:
                raise InvalidArgument(
                    f"{field}[{i}] has {len(r)} characters; an id has at most {MAX_ID_CHARS}"
                )
        canonical: dict[str, str] = {}
        for r in raw:
            try:
                canonical[r] = str(uuid.UUID(r))
            except ValueError:
                continue
        # The caller's tenant only: another tenant's id is unknown here, exactly like a missing one.
        store = tenant_store(self.store, ctx.tenant)
        found = {p.id for p in store.get(list(set(canonical.values())))}
        out: list[str] = []
        missing: list[str] = []
        for r in dict.fromkeys(raw):
            ctx.check()
            if r in canonical and canonical[r] in found:
                out.append(canonical[r])
                continue
            by_external = matching_ids(store, FilterSpec(must=(Match(Key.EXTERNAL_ID, r),)))
            if by_external:
                out.extend(by_external)
            else:
                missing.append(r)
        if missing:
            shown = ", ".join(m[:64] for m in missing[:10]) + (
                f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            )
            raise NotFound(f"{field}: no stored point has id {shown}")
        return list(dict.fromkeys(out))

    def get(
        self, ctx: RequestContext, raw: Sequence[str], *, field: str = "ids", with_vectors: bool = False
    ) -> list[StoredPoint]:
        """The stored points for `raw`, in the order given."""
        resolved = self.resolve(ctx, raw, field=field)
        store = tenant_store(self.store, ctx.tenant)
        by_id = {p.id: p for p in store.get(resolved, with_vectors=with_vectors)}
        return [by_id[i] for i in resolved if i in by_id]

    def get_one(self, ctx: RequestContext, raw: str, *, field: str) -> StoredPoint:
        points = self.get(ctx, [raw], field=field, with_vectors=True)
        if not points:
            raise NotFound(f"{field}: no stored point has id {raw[:64]}")
        return points[0]

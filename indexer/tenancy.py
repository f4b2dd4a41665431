"""Tenants: one collection holds every tenant's points; a TenantStore sees and changes one tenant's.

A tenant's points carry the tenant in their payload (`tenant`, a keyword index marked is_tenant,
so the engine keeps each tenant's points together) and ids derived in the tenant's namespace, so
identical files of two tenants are two points. The default tenant's points carry no tenant and
keep the ids of the default namespace: they are exactly the points an index held before tenants
existed, so a single-tenant deployment turns on keys without a migration.

Every read through a TenantStore is filtered on the tenant (queries, counts, scrolls) or checked
after the fact (point lookups by id), and every write is stamped with it, so a service that uses
one cannot reach another tenant's points whatever ids or filters a caller sends.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from indexer import query_plan as qp
from indexer.filters import FilterSpec, IsEmpty, Match
from indexer.schema import DEFAULT_NAMESPACE, Key, PointRecord, StoredPoint
from indexer.store import StoreError, VectorStore

DEFAULT_TENANT = DEFAULT_NAMESPACE
# Tenant names become id namespaces ("<tenant>/<key>#<segment>") and payload values: no '/' or
# ':' (which could make one namespace's names collide with another's), nothing unprintable.
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class ForeignPointError(StoreError):
    """A write named a point id that another tenant's point already has."""


def check_tenant(name: str) -> str:
    """The name, if it is a valid tenant name; raises ValueError saying what is allowed."""
    if not TENANT_NAME.fullmatch(name):
        raise ValueError(
            f"tenant {name[:80]!r} is not a valid tenant name: 1 to 64 letters, digits, '_', '-' "
            "or '.', starting with a letter or digit"
        )
    return name


def namespace(tenant: str) -> str:
    """The id namespace of a tenant's points (indexer.schema.point_id)."""
    return check_tenant(tenant)


def scope(tenant: str) -> FilterSpec:
    """The filter that keeps a tenant's points: its name, or no tenant at all for the default."""
    if tenant == DEFAULT_TENANT:
        return FilterSpec(must=(IsEmpty(Key.TENANT),))
    return FilterSpec(must=(Match(Key.TENANT, tenant),))


def owns(tenant: str, payload: dict[str, Any]) -> bool:
    """Whether a stored payload is one of the tenant's points (the same test as `scope`)."""
    value = payload.get(Key.TENANT)
    if tenant == DEFAULT_TENANT:
        return value is None or value == []
    return bool(value == tenant)


def holds_tenants(store: VectorStore) -> bool:
    """Whether any point of the store belongs to a tenant other than the default."""
    return store.count(FilterSpec(must_not=(IsEmpty(Key.TENANT),))) > 0


def tenant_store(store: VectorStore, tenant: str) -> VectorStore:
    """`store` as `tenant` sees it."""
    if isinstance(store, TenantStore):
        if store.tenant != tenant:  # a scoped store is never widened or re-pointed
            raise ValueError(f"a store scoped to tenant {store.tenant!r} cannot serve {tenant!r}")
        return store
    return TenantStore(store, tenant)


class TenantStore(VectorStore):
    """One tenant's view of a store. It does not own the store: close() leaves it open."""

    def __init__(self, inner: VectorStore, tenant: str) -> None:
        self.inner = inner
        self.tenant = check_tenant(tenant)
        self.kind = inner.kind
        self.schema = inner.schema
        self._scope = scope(tenant)

    def _scoped(self, spec: FilterSpec | None) -> FilterSpec:
        return self._scope if spec is None else spec.and_(self._scope)

    def upsert(self, points: Sequence[PointRecord]) -> None:
        if not points:
            return
        # Ids are derived in the tenant's namespace, so this finds nothing unless a writer chose
        # ids itself: then it must not overwrite (or take over) another tenant's point.
        foreign = [p.id for p in self.inner.get([p.id for p in points]) if not owns(self.tenant, p.payload)]
        if foreign:
            raise ForeignPointError(
                f"{len(foreign)} point id(s) are already in use, e.g. {foreign[0]}: "
                "derive point ids in the tenant's namespace (indexer.schema.point_id)"
            )
        self.inner.upsert([replace(p, payload=self._stamp(p.payload)) for p in points])

    def _stamp(self, payload: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in payload.items() if k != Key.TENANT}
        if self.tenant != DEFAULT_TENANT:
            out[Key.TENANT.value] = self.tenant
        return out

    def delete(self, ids: Sequence[str]) -> None:
        self.inner.delete([p.id for p in self.get(ids)])

    def optimize(self) -> None:
        self.inner.optimize()

    def create_field_index(self, key: str, kind: str) -> None:
        # Collection-wide, but it changes how fast filters run, never what any tenant can see.
        self.inner.create_field_index(key, kind)

    def field_indexes(self) -> dict[str, str]:
        return self.inner.field_indexes()

    def query_batch(self, plans: Sequence[qp.QueryPlan]) -> list[list[StoredPoint]]:
        return self.inner.query_batch([replace(p, filter=self._scoped(p.filter)) for p in plans])

    def get(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[StoredPoint]:
        # Checked after the lookup rather than filtered in it: both engines' retrieve-by-id takes
        # no filter. Another tenant's point is left out exactly like a missing one.
        return [p for p in self.inner.get(ids, with_vectors=with_vectors) if owns(self.tenant, p.payload)]

    def count(self, filter: FilterSpec | None = None) -> int:
        return self.inner.count(self._scoped(filter))

    def scroll(
        self, *, limit: int, offset: str | None = None, filter: FilterSpec | None = None
    ) -> tuple[list[StoredPoint], str | None]:
        return self.inner.scroll(limit=limit, offset=offset, filter=self._scoped(filter))

    def close(self) -> None:
        return None

"""Tenant scoping on both store adapters: the TenantStore view, and the services above it that
scope every call to RequestContext.tenant. Identical files of two tenants stay two points; an id
of another tenant is NOT_FOUND exactly as an unknown one; legacy points are the default tenant's."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as qe

from encoders.embed import Embedder
from encoders.encoder import Encoder
from encoders.modality import Modality
from indexer.edge_store import EdgeStore
from indexer.filters import FilterSpec, Match
from indexer.inputs import ItemInput
from indexer.items import ItemIndexer
from indexer.schema import CollectionSchema, Key, PointRecord, point_id
from indexer.store import VectorStore
from indexer.tenancy import DEFAULT_TENANT, ForeignPointError, TenantStore, holds_tenants, tenant_store
from server.config import ServerConfig
from server.context import RequestContext
from server.errors import NotFound
from server.planner import SearchParams
from server.query_types import QueryInput
from server.services import Services, build_services, make_services

SCHEMA = CollectionSchema(bundle_id="b-test", dim=8)
MakeStore = Callable[..., VectorStore]


def _point(key: str, tenant: str | None, seed: int) -> PointRecord:
    v = np.random.default_rng(seed).normal(size=8).astype(np.float32)
    payload: dict[str, object] = {"modality": "text", "media_id": key, "external_id": key}
    if tenant is not None:
        payload["tenant"] = tenant
    return PointRecord(point_id(key, 0, tenant or DEFAULT_TENANT), v / np.linalg.norm(v), payload)


def test_a_tenant_view_reads_and_changes_only_its_points(store_factory: MakeStore) -> None:
    raw = store_factory(SCHEMA)
    acme, beta, default = (tenant_store(raw, t) for t in ("acme", "beta", DEFAULT_TENANT))
    acme.upsert([_point(f"a{i}", "acme", i) for i in range(4)])
    beta.upsert([_point(f"b{i}", None, 10 + i) for i in range(3)])  # stamped by the view
    raw.upsert([_point("legacy", None, 20)])  # written before tenants existed: no tenant at all
    assert (acme.count(), beta.count(), default.count(), raw.count()) == (4, 3, 1, 8)
    b_ids = [p.id for p in beta.scroll(limit=10)[0]]
    assert all(p.payload[Key.TENANT] == "beta" for p in beta.get(b_ids))
    # Reads by id, filter or vector never reach another tenant's points.
    assert acme.get(b_ids) == [] and default.get(b_ids) == []
    for p in raw.get(b_ids, with_vectors=True):
        assert p.vector is not None
        hits = acme.query(p.vector, limit=50)
        assert len(hits) == 4 and all(h.payload["tenant"] == "acme" for h in hits)
        assert [h.id for h in default.query(p.vector, limit=50)] == [point_id("legacy")]
    assert acme.count(FilterSpec(must=(Match(Key.TENANT, "beta"),))) == 0
    assert acme.count(FilterSpec(must=(Match(Key.MEDIA_ID, "b0"),))) == 0
    assert beta.count(FilterSpec(must=(Match(Key.MEDIA_ID, "b0"),))) == 1
    # Deleting another tenant's ids does nothing; writing over them is refused.
    acme.delete(b_ids)
    assert beta.count() == 3
    with pytest.raises(ForeignPointError, match="already in use"):
        acme.upsert([_with_id(_point("x", None, 0), b_ids[0])])
    assert beta.get([b_ids[0]])[0].payload["media_id"] != "x"
    info = acme.info()
    assert info.points == 4 and info.by_modality["text"] == 4


def _with_id(p: PointRecord, new_id: str) -> PointRecord:
    return PointRecord(new_id, p.vector, p.payload, p.frames)


def test_a_view_is_never_widened_or_repointed(store_factory: MakeStore) -> None:
    view = tenant_store(store_factory(SCHEMA), "acme")
    assert tenant_store(view, "acme") is view
    with pytest.raises(ValueError, match="scoped to tenant 'acme' cannot serve 'beta'"):
        tenant_store(view, "beta")
    with pytest.raises(ValueError, match="not a valid tenant name"):
        TenantStore(view, "a/b")


def test_the_embedded_store_indexes_the_tenant_as_a_tenant(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "edge", SCHEMA)
    try:
        schema = store._shard.info().payload_schema
        params = schema[Key.TENANT].params
        assert isinstance(params, qe.KeywordIndexParams) and params.is_tenant is True
        assert schema[Key.MEDIA_ID].params is None  # only the tenant field is a tenant index
    finally:
        store.close()


# -- the services, scoped per call -------------------------------------------------------------


@pytest.fixture
def services(encoder: Encoder, store_factory: MakeStore) -> Iterator[Services]:
    store = store_factory(CollectionSchema(encoder.bundle.bundle_id, encoder.dim))
    s = make_services(Embedder(encoder), store, ServerConfig())
    yield s
    s.embedder.close()


def _as(tenant: str) -> RequestContext:
    return RequestContext(tenant=tenant, method="test")


TEXTS = ("a small red boat", "a green field of grass", "a dog on a beach")


def _write(services: Services, tenant: str) -> list[str]:
    items = [ItemInput(Modality.TEXT, t, id=f"doc{i}", metadata={"n": i}) for i, t in enumerate(TEXTS)]
    outcomes = services.writes.upsert(_as(tenant), items)
    assert all(o.error is None for o in outcomes), outcomes
    return [i for o in outcomes for i in o.ids]


def test_identical_items_of_two_tenants_are_two_sets_of_points(services: Services) -> None:
    a_ids, b_ids = _write(services, "acme"), _write(services, "beta")
    assert len(a_ids) == len(b_ids) == 3 and not set(a_ids) & set(b_ids)
    # The same caller id resolves to each tenant's own point.
    assert [p.id for p in services.queries.get(_as("acme"), ["doc0"])] == [a_ids[0]]
    assert [p.id for p in services.queries.get(_as("beta"), ["doc0"])] == [b_ids[0]]
    # Writing it again as another tenant does not make acme's copy "unchanged" or move it.
    again = services.writes.upsert(_as("acme"), [ItemInput(Modality.TEXT, TEXTS[0], id="doc0")])
    assert again[0].unchanged is False and again[0].ids == [a_ids[0]]


def test_search_recommend_and_mining_see_only_the_callers_points(services: Services) -> None:
    a_ids, b_ids = _write(services, "acme"), _write(services, "beta")
    params = SearchParams(top_k=50)
    for tenant, own in (("acme", a_ids), ("beta", b_ids)):
        hits = services.queries.search(_as(tenant), QueryInput(text="a boat"), params).hits
        assert {h.id for h in hits} == set(own)
        rec = services.queries.recommend(_as(tenant), [own[0]], [own[1]], params).hits
        assert {h.id for h in rec} <= set(own) - {own[0], own[1]}
        negatives, _ = services.mining.mine(_as(tenant), [QueryInput(text="boat")], [own[0]], k=5)
        assert {h.id for h in negatives} <= set(own)
    assert services.queries.stats(_as("acme")).points == 3
    assert services.queries.stats(_as("nobody")).points == 0


def test_another_tenants_id_is_not_found_exactly_like_an_unknown_one(services: Services) -> None:
    _write(services, "acme")
    b_ids = _write(services, "beta")
    unknown = str(uuid.uuid4())
    for make_call in (
        lambda i: services.queries.get(_as("acme"), [i]),
        lambda i: services.writes.delete(_as("acme"), [i]),
        lambda i: services.queries.search(_as("acme"), QueryInput(id=i), SearchParams(top_k=3)),
        lambda i: services.queries.recommend(_as("acme"), [i], [], SearchParams(top_k=3)),
        lambda i: services.mining.mine(_as("acme"), [], [i], k=3),
    ):
        messages = []
        for i in (b_ids[0], unknown):
            with pytest.raises(NotFound) as err:
                make_call(i)
            messages.append(err.value.message.replace(i, "<id>"))
        assert messages[0] == messages[1]
    assert len(services.queries.get(_as("beta"), b_ids)) == 3  # nothing of beta's was deleted


def test_the_default_tenant_sees_points_written_before_tenants_existed(services: Services) -> None:
    # An index built by an earlier version: the indexer over the bare store, no tenant payload.
    legacy = ItemIndexer(services.embedder, services.store)
    old = legacy.index([ItemInput(Modality.TEXT, "an old caption", id="old")])[0]
    assert "tenant" not in services.store.get(old.ids)[0].payload
    new = services.writes.upsert(_as(DEFAULT_TENANT), [ItemInput(Modality.TEXT, "a new caption")])[0]
    acme = _write(services, "acme")
    hits = services.queries.search(
        _as(DEFAULT_TENANT), QueryInput(text="caption"), SearchParams(top_k=10)
    ).hits
    assert {h.id for h in hits} == set(old.ids + new.ids)
    assert [p.id for p in services.queries.get(_as(DEFAULT_TENANT), ["old"])] == old.ids
    with pytest.raises(NotFound):
        services.queries.get(_as("acme"), ["old"])
    assert not set(acme) & {h.id for h in hits}
    # Same ids as before tenants: a re-ingest as the default tenant finds the legacy point unchanged.
    again = services.writes.upsert(
        _as(DEFAULT_TENANT), [ItemInput(Modality.TEXT, "an old caption", id="old")]
    )
    assert again[0].unchanged and again[0].ids == old.ids


def test_holds_tenants_sees_any_point_of_another_tenant(store_factory: MakeStore) -> None:
    raw = store_factory(SCHEMA)
    raw.upsert([_point("legacy", None, 1)])
    assert not holds_tenants(raw)
    tenant_store(raw, DEFAULT_TENANT).upsert([_point("d", None, 2)])
    assert not holds_tenants(raw)
    tenant_store(raw, "acme").upsert([_point("a", None, 3)])
    assert holds_tenants(raw)


def test_only_a_keyless_embedded_single_tenant_server_drops_the_default_scope(tmp_path: Path) -> None:
    def scoped(config: ServerConfig) -> bool:
        services = build_services(config)
        try:
            return services.queries.scope_default
        finally:
            services.close()

    base = ServerConfig(data_dir=tmp_path / "data", device="cpu")
    assert scoped(base) is False  # every call is the default tenant's, and nobody else writes
    assert scoped(replace(base, keys_file=tmp_path / "keys.json")) is True
    # Once another tenant's point is in the store, the default tenant's scope is back.
    services = build_services(replace(base, keys_file=tmp_path / "keys.json"))
    services.writes.upsert(_as("acme"), [ItemInput(Modality.TEXT, "a red kite")])
    services.close()
    assert scoped(base) is True
    services = build_services(base)
    try:
        hits = services.queries.search(
            _as(DEFAULT_TENANT), QueryInput(text="a red kite"), SearchParams(top_k=5)
        )
        assert hits.hits == []
    finally:
        services.close()

"""A server with API keys, over a real socket: every RPC refuses a missing, unknown or revoked key
(UNAUTHENTICATED) and a key without the method's scope (PERMISSION_DENIED); health checks stay
open; a revoke takes effect without a restart; tenants never see each other's points, whatever a
request names; and the points of the index from before keys existed are the default tenant's."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mmsearch import client as mc
from mmsearch.client import MMSearchClient
from mmsearch.v1 import search_pb2 as pb
from server.keys import KeyStore
from tests.e2e.conftest import run_cli
from tests.e2e.tenant_server import Keyed, item_ids, start_keyed

KEYS = {
    "a": ("acme", "read,write"),
    "a_read": ("acme", "read"),
    "a_write": ("acme", "write"),
    "admin": ("acme", "admin"),
    "b": ("beta", "read,write"),
    "dflt": ("default", "read,write"),
    "gone": ("acme", "read,write"),  # revoked before the server starts
}
LEGACY = ("an old photo of a lighthouse", "an old recipe for bread")
UNAUTH, DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
Call = Callable[[MMSearchClient], Any]


def _ingest(c: MMSearchClient) -> Any:
    requests = [pb.IngestRequest(start=pb.IngestStart()), pb.IngestRequest(end=pb.IngestEnd())]
    return list(c.ingest_stream(iter(requests), timeout=30))


RANDOM_ID = str(uuid.uuid4())
# One well-formed call per RPC, by the scope it needs.
READS: dict[str, Call] = {
    "Search": lambda c: c.search(text="a boat", top_k=3),
    "Embed": lambda c: c.embed([mc.query_input(text="a boat")]),
    "Get": lambda c: c.get([RANDOM_ID]),
    "Stats": lambda c: c.stats(),
    "Recommend": lambda c: c.recommend([RANDOM_ID]),
    "MineHardNegatives": lambda c: c.mine(queries=[mc.query_input(text="a boat")], k=3),
}
WRITES: dict[str, Call] = {
    "Upsert": lambda c: c.upsert([mc.text_item("a note")]),
    "Delete": lambda c: c.delete([RANDOM_ID]),
    "Ingest": _ingest,
    # No points: it only checks the bundle (here a wrong one: FAILED_PRECONDITION once admitted).
    "WritePoints": lambda c: c._stub.WritePoints(pb.WritePointsRequest(bundle_id="other"), timeout=30),
}
# Never called with a key that holds admin here: it would rebuild the index.
ADMIN: dict[str, Call] = {
    "Reindex": lambda c: list(c._stub.Reindex(pb.ReindexRequest(bundle="tiny"), timeout=30))
}


def _code(call: Call, c: MMSearchClient) -> grpc.StatusCode:
    try:
        call(c)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    root = tmp_path_factory.mktemp("tenants")
    # An index built before keys existed: a local ingest, no tenant anywhere.
    library = root / "library"
    library.mkdir()
    for i, text in enumerate(LEGACY):
        (library / f"note{i}.txt").write_text(text)
    proc = run_cli("ingest", str(library), "--data", str(root / "data"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    srv = start_keyed(root, KEYS, data=root / "data")
    KeyStore(srv.keys_file).revoke(srv.ids["gone"])
    yield srv
    srv.stop()


def test_every_rpc_refuses_a_missing_malformed_unknown_or_revoked_key(keyed: Keyed) -> None:
    calls = {**READS, **WRITES, **ADMIN}
    unknown = f"mms_{'0' * 12}_{'x' * 43}"
    clients = {
        "no key": keyed.client(None),
        "malformed": MMSearchClient(keyed.server.target, api_key="not-a-key"),
        "unknown": MMSearchClient(keyed.server.target, api_key=unknown),
        "revoked": keyed.client("gone"),
        # the right id with the wrong secret
        "forged": MMSearchClient(keyed.server.target, api_key=keyed.secrets["a"][:-4] + "AAAA"),
    }
    for who, c in clients.items():
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as err:
                call(c)
            assert err.value.code() == UNAUTH, f"{name} with {who}: {err.value.code()}"
            expected = "needs an API key" if who == "no key" else "the API key is not valid"
            assert expected in (err.value.details() or ""), (name, who, err.value.details())
        c.close()


def test_a_key_without_the_scope_is_permission_denied(keyed: Keyed) -> None:
    reader, writer, admin = keyed.client("a_read"), keyed.client("a_write"), keyed.client("admin")
    for name, call in WRITES.items():
        assert _code(call, reader) == DENIED, name
        assert _code(call, admin) not in (UNAUTH, DENIED), name
    for name, call in READS.items():
        assert _code(call, writer) == DENIED, name
        assert _code(call, reader) not in (UNAUTH, DENIED), name
        assert _code(call, admin) not in (UNAUTH, DENIED), name
    read_write = keyed.client("a")
    for name, call in ADMIN.items():
        for c in (reader, writer, read_write):
            assert _code(call, c) == DENIED, name
    with pytest.raises(grpc.RpcError) as err:
        reader.upsert([mc.text_item("x")])
    assert err.value.details() == f"Upsert needs the write scope; key {keyed.ids['a_read']} has read"


def test_health_and_reflection_need_no_key(keyed: Keyed) -> None:
    c = keyed.client(None)
    assert c.health() == "SERVING"
    assert c.health("mmsearch.v1.SearchService") == "SERVING"
    with grpc.insecure_channel(keyed.server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=30))
    names = {s.name for s in answer.list_services_response.service}
    assert "mmsearch.v1.SearchService" in names


def test_keys_created_and_revoked_while_the_server_runs_take_effect_at_once(keyed: Keyed) -> None:
    env_file = str(keyed.keys_file)
    created = run_cli(
        "keys", "create", "--keys-file", env_file, "--tenant", "acme", "--scopes", "read", "--json"
    )
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout)
    assert record["key"].startswith(f"mms_{record['id']}_") and "sha256" not in record
    c = MMSearchClient(keyed.server.target, api_key=record["key"])
    assert c.stats().points >= 0
    listed = run_cli("keys", "list", "--keys-file", env_file, "--json")
    assert record["key"] not in listed.stdout and record["id"] in listed.stdout
    revoked = run_cli("keys", "revoke", record["id"], "--keys-file", env_file)
    assert revoked.returncode == 0, revoked.stderr
    assert _code(READS["Stats"], c) == UNAUTH
    c.close()


def test_tenants_never_see_or_change_each_others_points(keyed: Keyed) -> None:
    a, b = keyed.client("a"), keyed.client("b")
    items = [mc.text_item(t, id=f"same{i}") for i, t in enumerate(("a red kite", "a blue kite"))]
    a_ids, b_ids = item_ids(a.upsert(items)), item_ids(b.upsert(items))
    assert len(a_ids) == len(b_ids) == 2 and not set(a_ids) & set(b_ids)
    assert {h.id for h in a.search(text="a kite", top_k=50).hits} >= set(a_ids)
    assert not {h.id for h in a.search(text="a kite", top_k=50).hits} & set(b_ids)
    assert [p.point.id for p in b.get(["same0"]).points] == [b_ids[0]]
    # Another tenant's id answers exactly as an unknown id does: no way to learn it exists.
    for call in (
        lambda i: a.get([i]),
        lambda i: a.delete([i]),
        lambda i: a.recommend([i]),
        lambda i: a.search(id=i),
    ):
        answers = []
        for i in (b_ids[0], str(uuid.uuid4())):
            with pytest.raises(grpc.RpcError) as err:
                call(i)
            answers.append((err.value.code(), (err.value.details() or "").replace(i, "<id>")))
        assert answers[0] == answers[1] and answers[0][0] == grpc.StatusCode.NOT_FOUND
    assert len(b.get(b_ids).points) == 2  # still there
    assert a.delete(["same0"]) == 1  # acme's own copy
    assert [p.point.id for p in b.get(["same0"]).points] == [b_ids[0]]


def test_a_request_cannot_name_its_tenant(keyed: Keyed) -> None:
    a, b = keyed.client("a"), keyed.client("b")
    # A tenant in the item's metadata is user metadata, not the point's tenant.
    (written,) = item_ids(a.upsert([mc.text_item("a green lantern", metadata={"tenant": "beta"})]))
    assert written not in {h.id for h in b.search(text="a green lantern", top_k=50).hits}
    # Filters on the tenant field narrow within the caller's tenant, never widen past it.
    for term in ("tenant=beta", "tenant!=acme", "meta.tenant=beta"):
        hits = b.search(text="a green lantern", top_k=50, filter=mc.parse_filter([term])).hits
        assert written not in {h.id for h in hits}, term
    # Metadata naming a tenant is not read either.
    naming = (("x-tenant", "acme"), ("tenant", "acme"))
    with pytest.raises(grpc.RpcError) as err:
        b._stub.Get(pb.GetRequest(ids=[written]), metadata=naming, timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_index_from_before_keys_is_the_default_tenants(keyed: Keyed) -> None:
    dflt, a = keyed.client("dflt"), keyed.client("a")
    sources = {h.text for h in dflt.search(text="an old photo", top_k=50).hits}
    assert set(LEGACY) <= sources
    assert not set(LEGACY) & {h.text for h in a.search(text="an old photo", top_k=50).hits}
    assert dflt.stats().points == len(LEGACY)

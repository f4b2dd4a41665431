"""API keys (server.keys), the scope of each method, the exposure rule, and the interceptor on
every handler kind (unary and streaming), in an in-process grpc.aio server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from server.auth import (
    METHOD_SCOPES,
    SERVICE,
    AuthInterceptor,
    ExposureError,
    check_exposure,
    is_loopback,
    presented_key,
    required_scope,
)
from server.config import ServerConfig
from server.context import OPEN_PRINCIPAL, principal_var
from server.keys import KeyFileError, KeyStore, Scope, parse_scopes

# -- the keys file --------------------------------------------------------------------------


def test_a_created_key_verifies_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    record, secret = store.create("acme", [Scope.READ, Scope.WRITE], name="ci")
    assert secret.startswith(f"mms_{record.id}_") and len(secret) > 50
    text = (tmp_path / "keys.json").read_text()
    assert secret not in text and secret.split("_", 2)[2] not in text
    assert record.sha256 in text
    assert stat.S_IMODE(os.stat(tmp_path / "keys.json").st_mode) == 0o600
    found = store.verify(secret)
    assert found is not None and (found.tenant, found.scopes, found.name) == (
        "acme",
        (Scope.READ, Scope.WRITE),
        "ci",
    )
    # A second reader (the server) sees the same key.
    assert KeyStore(tmp_path / "keys.json").verify(secret) == found


def test_wrong_malformed_and_foreign_keys_do_not_verify(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    record, secret = store.create("acme", [Scope.READ])
    other, other_secret = store.create("beta", [Scope.READ])
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    # The right id with another key's secret: the hash decides, not the id.
    swapped = f"mms_{record.id}_{other_secret.split('_', 2)[2]}"
    for bad in (
        tampered,
        swapped,
        "",
        "mms",
        "mms__x",
        f"mms_{record.id}_",
        "Bearer " + secret,
        secret + " ",
    ):
        assert store.verify(bad) is None, bad
    assert store.verify(other_secret) == other


def test_revoke_takes_effect_for_a_reader_that_already_loaded_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    cli, server = KeyStore(path), KeyStore(path)
    record, secret = cli.create("acme", [Scope.READ])
    assert server.verify(secret) is not None  # the server has the file loaded
    revoked = cli.revoke(record.id)
    assert revoked.revoked is not None
    assert server.verify(secret) is None
    assert [k.id for k in server.records()] == [record.id]  # kept, so `keys list` still shows it
    with pytest.raises(ValueError, match="no key with id 'nope'"):
        cli.revoke("nope")


def test_bad_tenants_and_scopes_are_refused_by_name(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    for tenant in ("", "a/b", "a:b", "../x", "x" * 65, "-x", "a b"):
        with pytest.raises(ValueError, match="not a valid tenant name"):
            store.create(tenant, [Scope.READ])
    with pytest.raises(ValueError, match="unknown scope 'delete'"):
        parse_scopes("read,delete")
    with pytest.raises(ValueError, match="no scopes given"):
        parse_scopes(" , ")
    assert parse_scopes("WRITE, read,read") == (Scope.READ, Scope.WRITE)
    assert not (tmp_path / "keys.json").exists()


def test_a_missing_or_malformed_keys_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    with pytest.raises(KeyFileError, match="does not exist: create a key"):
        KeyStore(path).verify("mms_0123456789ab_x")
    path.write_text("{not json")
    with pytest.raises(KeyFileError, match=f"{path} is not a valid keys file"):
        KeyStore(path).check()
    path.write_text(json.dumps({"version": 1, "keys": [{"id": "x", "tenant": "a/b", "scopes": ["read"]}]}))
    with pytest.raises(KeyFileError, match="not a valid keys file"):
        KeyStore(path).check()


def test_admin_holds_every_scope_and_write_does_not_imply_read(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    admin, _ = store.create("acme", [Scope.ADMIN])
    writer, _ = store.create("acme", [Scope.WRITE])
    assert all(admin.allows(s) for s in Scope)
    assert writer.allows(Scope.WRITE) and not writer.allows(Scope.READ) and not writer.allows(Scope.ADMIN)


# -- methods, metadata and exposure ---------------------------------------------------------


def test_every_rpc_of_the_service_has_a_scope_and_unknown_ones_need_admin() -> None:
    from mmsearch.v1 import search_pb2 as pb

    for method in pb.DESCRIPTOR.services_by_name["SearchService"].methods:
        assert SERVICE + method.name in METHOD_SCOPES, f"{method.name} has no scope in server.auth"
    assert required_scope(SERVICE + "Search") == Scope.READ
    assert required_scope(SERVICE + "Delete") == Scope.WRITE
    assert required_scope(SERVICE + "Ingest") == Scope.WRITE
    assert required_scope(SERVICE + "SomethingNew") == Scope.ADMIN
    assert required_scope("/grpc.health.v1.Health/Check") is None
    assert required_scope("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is None


def test_the_key_is_read_from_bearer_or_x_api_key_metadata() -> None:
    assert presented_key((("authorization", "Bearer mms_a_b"),)) == "mms_a_b"
    assert presented_key((("authorization", "bearer  mms_a_b "),)) == "mms_a_b"
    assert presented_key((("x-api-key", "mms_a_b"),)) == "mms_a_b"
    assert presented_key((("authorization", "Basic dXNlcg=="),)) is None
    assert presented_key((("authorization", "Bearer "),)) is None
    assert presented_key(None) is None


def test_loopback_addresses() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com", "[::]"))


def test_a_non_loopback_bind_without_keys_is_refused_unless_insecure(tmp_path: Path) -> None:
    assert check_exposure(ServerConfig(host="127.0.0.1")) is None
    for host in ("0.0.0.0", "::", "192.168.1.4"):
        with pytest.raises(ExposureError, match=f"refusing to serve on {host} without API keys"):
            check_exposure(ServerConfig(host=host))
        assert check_exposure(ServerConfig(host=host, insecure=True)) is None
    path = tmp_path / "keys.json"
    with pytest.raises(KeyFileError, match="does not exist"):
        check_exposure(ServerConfig(host="0.0.0.0", keys_file=path))
    KeyStore(path).create("acme", [Scope.READ])
    keys = check_exposure(ServerConfig(host="0.0.0.0", keys_file=path))
    assert keys is not None and keys.check() == 1


def test_inconsistent_tls_settings_are_refused(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    with pytest.raises(ExposureError, match="both --tls-cert and --tls-key"):
        check_exposure(ServerConfig(tls_cert=pem))
    with pytest.raises(ExposureError, match="needs --tls-cert and --tls-key"):
        check_exposure(ServerConfig(tls_client_ca=pem))


# -- the interceptor on every handler kind --------------------------------------------------


def _who() -> dict[str, str]:
    p = principal_var.get()
    return {"tenant": p.tenant, "key": p.key_id}


def _handlers() -> grpc.GenericRpcHandler:
    """Search (unary), Ingest (client stream), and two test-only streaming methods that need
    admin: each answers with the principal it ran as."""

    def enc(d: dict[str, str]) -> bytes:
        return json.dumps(d).encode()

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> dict[str, str]:
        return _who()

    async def client_stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> dict[str, str]:
        async for _ in requests:
            pass
        return _who()

    async def server_stream(
        request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dict[str, str]]:
        for _ in range(2):
            yield _who()

    async def bidi(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        async for _ in requests:
            await context.write(_who())  # the write() style, not a generator

    return grpc.method_handlers_generic_handler(
        "mmsearch.v1.SearchService",
        {
            "Search": grpc.unary_unary_rpc_method_handler(unary, response_serializer=enc),
            "Ingest": grpc.stream_unary_rpc_method_handler(client_stream, response_serializer=enc),
            "Watch": grpc.unary_stream_rpc_method_handler(server_stream, response_serializer=enc),
            "Chat": grpc.stream_stream_rpc_method_handler(bidi, response_serializer=enc),
        },
    )


@contextlib.contextmanager
def _serving(keys: KeyStore) -> Iterator[grpc.Channel]:
    """An aio server with the interceptor on its own loop and thread, and a blocking channel to
    it. (The blocking client reports a refused streaming call's status faithfully; the asyncio
    client can report INTERNAL instead when the server ends the call early, grpc/grpc#36066.)"""
    loop = asyncio.new_event_loop()
    ready: concurrent.futures.Future[int] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def main() -> None:
        server = grpc.aio.server(interceptors=[AuthInterceptor(keys)])
        server.add_generic_rpc_handlers((_handlers(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.set_result(port)
        await stop.wait()
        await server.stop(None)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{ready.result(timeout=10)}") as channel:
            yield channel
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        loop.close()


def _md(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def _status(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        result = call()
        if not isinstance(result, dict):
            list(result)  # a response stream
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_every_handler_kind_runs_as_the_keys_principal_or_is_refused(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    writer, write_key = keys.create("acme", [Scope.READ, Scope.WRITE])
    admin, admin_key = keys.create("beta", [Scope.ADMIN])
    with _serving(keys) as ch:
        search = ch.unary_unary(SERVICE + "Search", response_deserializer=json.loads)
        ingest = ch.stream_unary(SERVICE + "Ingest", response_deserializer=json.loads)
        watch = ch.unary_stream(SERVICE + "Watch", response_deserializer=json.loads)
        chat = ch.stream_stream(SERVICE + "Chat", response_deserializer=json.loads)
        acme, beta = {"tenant": "acme", "key": writer.id}, {"tenant": "beta", "key": admin.id}
        assert search(b"", metadata=_md(write_key)) == acme
        assert ingest(iter([b"x"] * 3), metadata=_md(write_key)) == acme
        assert list(watch(b"", metadata=_md(admin_key))) == [beta] * 2
        assert list(chat(iter([b"x"] * 3), metadata=_md(admin_key))) == [beta] * 3

        unauth, denied = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
        assert _status(lambda: search(b"")) == unauth
        assert _status(lambda: search(b"", metadata=_md("mms_000000000000_nope"))) == unauth
        assert _status(lambda: ingest(iter([b"x"] * 3))) == unauth
        assert _status(lambda: watch(b"", metadata=_md("garbage"))) == unauth
        assert _status(lambda: chat(iter([b"x"] * 3))) == unauth
        # The read+write key may not call the methods only admin may.
        assert _status(lambda: watch(b"", metadata=_md(write_key))) == denied
        assert _status(lambda: chat(iter([b"x"] * 3), metadata=_md(write_key))) == denied
    assert principal_var.get() == OPEN_PRINCIPAL  # nothing leaked into this context


def test_a_read_only_key_is_denied_writes_with_a_message_naming_the_scope(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    reader, read_key = keys.create("acme", [Scope.READ])
    with _serving(keys) as ch:
        ingest = ch.stream_unary(SERVICE + "Ingest")
        with pytest.raises(grpc.RpcError) as err:
            ingest(iter([b"x"]), metadata=(("x-api-key", read_key),))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.value.details() == f"Ingest needs the write scope; key {reader.id} has read"


def test_open_principal_is_the_default_tenant_with_every_scope() -> None:
    assert OPEN_PRINCIPAL.tenant == "default" and OPEN_PRINCIPAL.key_id == ""
    assert OPEN_PRINCIPAL.scopes == frozenset(s.value for s in Scope)


_LIGHT = """
import json, sys
from mmsearch.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "heavy": sorted(m for m in ("torch", "open_clip") if m in sys.modules)}))
"""


@pytest.mark.parametrize(
    ("argv", "rc"),
    [
        (["keys", "create", "--keys-file", "{keys}", "--tenant", "acme", "--scopes", "read"], 0),
        (["keys", "list", "--keys-file", "{keys}"], 0),
        (["keys", "revoke", "000000000000", "--keys-file", "{keys}"], 1),
        (["serve", "--host", "0.0.0.0", "--port", "0"], 1),  # refused before any model code loads
    ],
    ids=lambda v: " ".join(v[:4]) if isinstance(v, list) else str(v),
)
def test_keys_and_a_refused_serve_load_no_model_code(argv: list[str], rc: int, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSEARCH_")}
    args = [a.replace("{keys}", str(tmp_path / "keys.json")) for a in argv]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", _LIGHT, *args], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["rc"], out["heavy"]) == (rc, []), proc.stderr
    if argv[0] == "serve":
        assert "refusing to serve on 0.0.0.0 without API keys" in proc.stderr

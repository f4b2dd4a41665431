"""Limits of a real server, each answered with its own status and a message naming the limit:
message size, concurrent calls and the queue behind them (per lane), the server's deadline cap,
and per-key rate limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest

from mmsearch import client as mc
from mmsearch.client import MMSearchClient
from mmsearch.v1 import search_pb2 as pb
from mmsearch.v1 import search_pb2_grpc as pb_grpc
from server.keys import KeyStore, Scope
from tests.e2e.conftest import ServerProcess, start_server

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One query at a time with no queue, one heavy query with a queue of one, 1 MiB messages."""
    env = {
        "MMSEARCH_MAX_MESSAGE_BYTES": str(MIB),
        "MMSEARCH_MAX_CONCURRENT_RPCS": "1",
        "MMSEARCH_MAX_QUEUED_RPCS": "0",
        "MMSEARCH_MAX_CONCURRENT_HEAVY_RPCS": "1",
        "MMSEARCH_MAX_QUEUED_HEAVY_RPCS": "1",
    }
    srv = start_server(tmp_path_factory.mktemp("tight"), env=env)
    with MMSearchClient(srv.target, timeout=60) as c:
        c.wait_ready(30)
        c.upsert([mc.text_item(f"note {i} about kites") for i in range(20)])
    yield srv
    srv.stop()


def slow_embed(n: int = 64, chars: int = 12_000) -> pb.EmbedRequest:
    """Seconds of text-tower work on the tiny bundle, in a heavy-lane (large) message."""
    body = " ".join(f"w{i}" for i in range(chars // 4))[:chars]
    return pb.EmbedRequest(inputs=[pb.QueryInput(text=f"{i} {body}") for i in range(n)])


async def statuses(target: str, requests: list[tuple[str, object]]) -> list[tuple[str, str, float]]:
    """Send every request at once; (status, details, seconds) for each."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SearchServiceStub(channel)

        async def one(method: str, request: object) -> tuple[str, str, float]:
            start = time.perf_counter()
            try:
                await getattr(stub, method)(request, timeout=60)
                return "OK", "", time.perf_counter() - start
            except grpc.aio.AioRpcError as exc:
                return exc.code().name, exc.details() or "", time.perf_counter() - start

        return await asyncio.gather(*(one(m, r) for m, r in requests))


def test_oversized_message_is_resource_exhausted_naming_the_limit(tight: ServerProcess) -> None:
    with MMSearchClient(tight.target, timeout=60) as client:
        with pytest.raises(grpc.RpcError) as exc:
            client.search(image=b"\x00" * (2 * MIB), top_k=1)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(MIB) in (exc.value.details() or "")  # the server's limit, in bytes
        assert client.search(text="kites", top_k=1).hits  # and the server carries on


def test_calls_past_the_concurrency_bound_are_refused_at_once(tight: ServerProcess) -> None:
    search = pb.SearchRequest(query=pb.QueryInput(text="kites"), top_k=5)
    got = asyncio.run(statuses(tight.target, [("Search", search)] * 24))
    refused = [(d, s) for code, d, s in got if code == "RESOURCE_EXHAUSTED"]
    assert any(code == "OK" for code, _, _ in got)
    assert refused, got
    assert all("max_concurrent_rpcs=1" in d and "max_queued_rpcs=0" in d for d, _ in refused)
    ok_times = sorted(s for code, _, s in got if code == "OK")
    assert min(s for _, s in refused) < ok_times[-1]  # refused without waiting for the work


def test_heavy_calls_queue_to_their_bound_and_are_refused_past_it(tight: ServerProcess) -> None:
    got = asyncio.run(statuses(tight.target, [("Embed", slow_embed(8, 4000))] * 4))
    codes = sorted(code for code, _, _ in got)
    assert codes.count("OK") >= 2  # one running and one queued behind it
    refused = [d for code, d, _ in got if code == "RESOURCE_EXHAUSTED"]
    assert refused and all(
        "max_concurrent_heavy_rpcs=1" in d and "max_queued_heavy_rpcs=1" in d for d in refused
    )
    # An ordinary query is in a lane of its own: heavy calls never fill it.
    with MMSearchClient(tight.target, timeout=60) as client:
        assert client.search(text="kites", top_k=1).hits


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, str]]:
    """A 0.2 s deadline cap and a rate limit of 1 call/s in bursts of 3, per API key."""
    data = tmp_path_factory.mktemp("capped")
    keys = KeyStore(data.parent / f"{data.name}-keys.json")
    _, key_a = keys.create("default", [Scope.READ, Scope.WRITE], name="a")
    _, key_b = keys.create("default", [Scope.READ], name="b")
    env = {
        "MMSEARCH_MAX_DEADLINE_SECONDS": "0.2",
        "MMSEARCH_RATE_LIMIT_PER_SECOND": "1",
        "MMSEARCH_RATE_LIMIT_BURST": "3",
        "MMSEARCH_KEYS_FILE": str(keys.path),
    }
    srv = start_server(data, env=env)
    yield srv, key_a, key_b
    srv.stop()


def test_the_server_caps_every_deadline(capped: tuple[ServerProcess, str, str]) -> None:
    srv, key, _ = capped
    with MMSearchClient(srv.target, timeout=60, api_key=key) as client:
        start = time.perf_counter()
        with pytest.raises(grpc.RpcError) as exc:
            client.embed(list(slow_embed(256, 8000).inputs))  # the client allows 60 s
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "max_deadline_seconds=0.2" in (exc.value.details() or "")
        assert time.perf_counter() - start < 10  # stopped at its next check, not run to the end


def test_rate_limits_are_per_key_and_say_when_to_retry(capped: tuple[ServerProcess, str, str]) -> None:
    srv, key_a, key_b = capped
    time.sleep(3.5)  # a full bucket for key a, whatever ran before
    with (
        MMSearchClient(srv.target, timeout=60, api_key=key_a) as a,
        MMSearchClient(srv.target, timeout=60, api_key=key_b) as b,
    ):
        for _ in range(3):
            a.stats()
        with pytest.raises(grpc.RpcError) as exc:
            a.stats()
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = exc.value.details() or ""
        assert "rate limit" in details and "retry in" in details and "rate_limit_per_second" in details
        b.stats()  # another key has its own bucket
        time.sleep(1.2)
        a.stats()  # and a's refills

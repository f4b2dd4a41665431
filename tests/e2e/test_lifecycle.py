"""Lifecycle of a real server: SIGTERM drains (health NOT_SERVING, new calls UNAVAILABLE, calls in
flight finish, exit within the grace period), and kill -9 loses no acknowledged write."""

from __future__ import annotations

import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mmsearch import client as mc
from mmsearch.client import MMSearchClient
from tests.e2e.conftest import ServerProcess, start_server


def metrics_url(srv: ServerProcess) -> str:
    for _ in range(100):
        for line in srv.output:
            m = re.search(r"metrics on (http://\S+/metrics)", line)
            if m:
                return m.group(1)
        time.sleep(0.05)
    raise AssertionError("the server did not log its metrics address:\n" + "".join(srv.output))


def in_flight(url: str, lane: str) -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    m = re.search(rf'mmsearch_in_flight_rpcs\{{lane="{lane}"\}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def long_items(n: int, chars: int = 20_000) -> list[mc.pb.Item]:
    body = " ".join(f"w{i}" for i in range(chars))[:chars]
    return [mc.text_item(f"item {i} {body}") for i in range(n)]


def health(target: str) -> str:
    with grpc.insecure_channel(target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))


def upsert_in_background(target: str, items: list[mc.pb.Item]) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def run() -> None:
        with MMSearchClient(target, timeout=300) as c:
            try:
                out["response"] = c.upsert(items)
            except grpc.RpcError as exc:
                out["error"] = exc.code()
            out["at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_sigterm_drains_calls_in_flight_then_exits(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", "--metrics-port", "0", env={"MMSEARCH_GRACE_SECONDS": "120"})
    url = metrics_url(srv)
    thread, out = upsert_in_background(srv.target, long_items(6))
    deadline = time.monotonic() + 60
    while in_flight(url, "write") < 1:
        assert time.monotonic() < deadline, "the write never started"
        time.sleep(0.02)
    srv.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    # Health checks are still answered, and say the server is going away.
    while health(srv.target) != "NOT_SERVING":
        assert time.monotonic() - signalled < 10
        time.sleep(0.02)
    with MMSearchClient(srv.target, timeout=30) as c, pytest.raises(grpc.RpcError) as exc:
        c.search(text="anything", top_k=1)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in (exc.value.details() or "")
    assert "response" not in out, "the write finished before the checks: make it longer"
    thread.join(120)
    assert "error" not in out, out
    assert out["response"].written == 6  # type: ignore[attr-defined]
    assert srv.proc.wait(timeout=30) == 0
    finished = float(out["at"])  # type: ignore[arg-type]
    assert time.monotonic() - finished < 15  # it exits once the drained call is answered


def test_a_call_longer_than_the_grace_period_does_not_hold_the_exit(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", "--metrics-port", "0", env={"MMSEARCH_GRACE_SECONDS": "1"})
    url = metrics_url(srv)
    thread, out = upsert_in_background(srv.target, long_items(32))
    while in_flight(url, "write") < 1:
        time.sleep(0.02)
    start = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=30) == 0
    assert time.monotonic() - start < 1 + 3 + 5  # grace + the threads' exit wait + start-up slack
    thread.join(30)
    assert "error" in out  # cut off, and told so


def test_kill_9_loses_no_acknowledged_upsert(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data")
    acknowledged: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with MMSearchClient(srv.target, timeout=30) as c:
            for batch in range(10_000):
                if stop.is_set():
                    return
                try:
                    response = c.upsert([mc.text_item(f"note {batch}-{i}") for i in range(8)])
                except grpc.RpcError:
                    return  # the server is gone: what it acknowledged is what must survive
                acknowledged.extend(point for r in response.results if not r.error for point in r.ids)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while len(acknowledged) < 160 and time.monotonic() < deadline:
        time.sleep(0.01)
    srv.proc.send_signal(signal.SIGKILL)  # mid-stream: the next upsert is in flight
    srv.proc.wait(timeout=30)
    stop.set()
    thread.join(30)
    assert len(acknowledged) >= 160
    again = start_server(tmp_path / "data")
    try:
        with MMSearchClient(again.target, timeout=60) as c:
            found: set[str] = set()
            for start in range(0, len(acknowledged), 500):
                points = c.get(acknowledged[start : start + 500]).points
                found.update(p.point.id for p in points)
            missing = len(acknowledged) - len(found)
            assert missing == 0, f"{missing} of {len(acknowledged)} acknowledged points lost"
            assert c.stats().points >= len(acknowledged)
    finally:
        assert again.stop() == 0

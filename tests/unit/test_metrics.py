"""Metrics and structured logs of a real (in-process) server: per-RPC latency by status code,
stage timings, batch sizes, items ingested by modality, rejections, served over HTTP; one JSON
log line per call with its request id and tenant."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import urllib.request
from pathlib import Path

import grpc
import pytest

from encoders.embed import Embedder
from encoders.encoder import Encoder
from indexer.edge_store import EdgeStore
from indexer.schema import CollectionSchema
from mmsearch import client as mc
from mmsearch.v1 import search_pb2 as pb
from mmsearch.v1 import search_pb2_grpc as pb_grpc
from server.app import start_server
from server.config import ServerConfig
from server.logs import install_request_ids
from server.metrics import Metrics
from server.services import make_services
from tests.media import image_bytes


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


def test_server_metrics_and_json_access_lines(encoder: Encoder, tmp_path: Path) -> None:
    buf = io.StringIO()
    logger = logging.getLogger("mmsearch")
    handler = logging.StreamHandler(buf)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    install_request_ids(logger, log_format="json")
    config = ServerConfig(port=0, metrics_port=0, max_concurrent_writes=1, max_queued_heavy_rpcs=0)
    store = EdgeStore(
        tmp_path / "store", CollectionSchema(bundle_id=encoder.bundle.bundle_id, dim=encoder.dim)
    )
    services = make_services(Embedder(encoder), store, config)

    async def scenario() -> str:
        running = await start_server(services, config)
        assert running.metrics is not None
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = pb_grpc.SearchServiceStub(channel)
                items = [
                    mc.text_item("a red kite"),
                    mc.text_item("a blue ferry"),
                    mc.image_item(image_bytes(1)),
                ]
                assert (await stub.Upsert(pb.UpsertRequest(items=items), timeout=60)).written == 3
                await stub.Search(
                    pb.SearchRequest(query=pb.QueryInput(text="kite"), top_k=2),
                    metadata=(("x-request-id", "req-json-1"),),
                    timeout=60,
                )
                with pytest.raises(grpc.aio.AioRpcError) as bad:
                    await stub.Search(pb.SearchRequest(top_k=1), timeout=60)
                assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                # Two writes at once with one write slot and no queue: one is refused.
                many = [mc.text_item(f"item {i} " + "word " * 300) for i in range(64)]
                outcomes = await asyncio.gather(
                    *(stub.Upsert(pb.UpsertRequest(items=many), timeout=60) for _ in range(2)),
                    return_exceptions=True,
                )
                assert any(
                    isinstance(o, grpc.aio.AioRpcError) and o.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    for o in outcomes
                )
            url = f"http://127.0.0.1:{running.metrics.port}/metrics"
            return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
        finally:
            await running.server.stop(0)
            running.service.shutdown()
            running.metrics.close()

    try:
        text = asyncio.run(scenario())
    finally:
        services.close()
        logger.removeHandler(handler)
        logger.setLevel(level)

    rpc = "mmsearch_rpc_duration_seconds_count"
    assert sample(text, rpc, method="Search", code="OK") == 1
    assert sample(text, rpc, method="Search", code="INVALID_ARGUMENT") == 1
    assert sample(text, rpc, method="Upsert", code="RESOURCE_EXHAUSTED") == 1
    assert sample(text, "mmsearch_rejections_total", reason="busy") == 1
    for stage in ("queue", "encode", "search", "group"):
        assert sample(text, "mmsearch_stage_duration_seconds_count", stage=stage) >= 1, stage
    assert sample(text, "mmsearch_batch_size_count", kind="text") >= 1
    assert sample(text, "mmsearch_batch_size_count", kind="store") >= 1
    assert sample(text, "mmsearch_items_ingested_total", modality="text") == 2 + 64
    assert sample(text, "mmsearch_items_ingested_total", modality="image") == 1
    assert sample(text, "mmsearch_text_cache_lookups_total", result="miss") >= 1
    assert "mmsearch_queue_depth" in text and "mmsearch_in_flight_rpcs" in text

    lines = [json.loads(line) for line in buf.getvalue().splitlines()]  # every line is one JSON object
    access = [entry for entry in lines if entry["logger"] == "mmsearch.access"]
    ok = next(entry for entry in access if entry["request_id"] == "req-json-1")
    assert ok["method"] == "Search" and ok["code"] == "OK" and ok["ms"] > 0 and ok["tenant"] == "default"
    assert {entry["code"] for entry in access} >= {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
    assert all(len(entry["request_id"]) > 1 for entry in access)  # every call has an id


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.items_ingested.labels("text").inc(3)
    assert a.registry.get_sample_value("mmsearch_items_ingested_total", {"modality": "text"}) == 3
    assert b.registry.get_sample_value("mmsearch_items_ingested_total", {"modality": "text"}) is None


def test_json_lines_escape_client_text_and_carry_extra_fields() -> None:
    buf = io.StringIO()
    logger = logging.getLogger("mmsearch.test-json")
    logger.propagate = False
    handler = logging.StreamHandler(buf)
    logger.addHandler(handler)
    install_request_ids(logger, log_format="json")
    logger.warning("key %r\nforged INFO line", "a\x00b", extra={"method": "Search"})
    (line,) = buf.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["msg"].endswith("forged INFO line") and entry["method"] == "Search"
    assert entry["request_id"] == "-" and entry["level"] == "WARNING"
    with pytest.raises(ValueError, match="log_format"):
        install_request_ids(logger, log_format="xml")

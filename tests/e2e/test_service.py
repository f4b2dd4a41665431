"""End to end: the real server over a real socket, driven by the CLI and the Python client."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from mmsearch import client as mc
from mmsearch.client import MMSearchClient
from mmsearch.v1 import search_pb2 as pb
from tests.e2e.conftest import ServerProcess, run_cli, start_server
from tests.media import TEXTS, image_bytes, write_library


@pytest.fixture(scope="module")
def library(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = write_library(tmp_path_factory.mktemp("lib"))
    root = paths["t0"].parent.parent
    proc = run_cli("ingest", str(root), "--server", server.target, "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["indexed"] == 6 + len(TEXTS) + 1
    assert summary["skipped"] == 1 and summary["quarantined"] == 2 and summary["failed"] == 0
    assert {Path(e["path"]).name for e in summary["errors"]} == {"corrupt.jpg", "truncated.png"}
    paths["root"] = root
    return paths


def _code(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()  # type: ignore[no-any-return]


def test_health_and_reflection(client: MMSearchClient, server: ServerProcess) -> None:
    assert client.health() == "SERVING"
    assert client.health("mmsearch.v1.SearchService") == "SERVING"
    with grpc.insecure_channel(server.target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
    assert {"mmsearch.v1.SearchService", "grpc.health.v1.Health"} <= services


def test_cli_text_and_image_search_find_duplicates_at_rank_one(
    server: ServerProcess, library: dict[str, Path]
) -> None:
    proc = run_cli("search", "--server", server.target, "--text", TEXTS[3], "--top-k", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert results[0]["source"] == str(library["t3"])
    assert results[0]["modality"] == "text" and results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert {"id", "score", "modality", "source"} <= set(results[0])

    proc = run_cli(
        "search", "--server", server.target, "--image", str(library["img4"]), "--top-k", "3", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert results[0]["source"] == str(library["img4"]) and results[0]["modality"] == "image"
    assert results[0]["attributes"]["width"] == 96


def test_cli_stats(server: ServerProcess, library: dict[str, Path], client: MMSearchClient) -> None:
    proc = run_cli("stats", "--server", server.target, "--json")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["points"] == client.stats().points > 0
    assert stats["bundle_id"].startswith("b") and stats["by_modality"] == dict(client.stats().by_modality)
    # the library's six images at least: other tests of the module may have written more
    assert stats["by_modality"]["image"] >= 6


def test_four_cross_modal_directions(client: MMSearchClient, library: dict[str, Path]) -> None:
    for query, target in [
        ({"text": "a photo"}, "image"),
        ({"text": "a photo"}, "text"),
        ({"image": library["img0"].read_bytes()}, "text"),
        ({"image": library["img0"].read_bytes()}, "image"),
    ]:
        resp = client.search(top_k=5, modalities=[target], **query)  # type: ignore[arg-type]
        assert len(resp.hits) == 5
        assert {mc.modality_name(h.modality) for h in resp.hits} == {target}
        scores = [h.score for h in resp.hits]
        assert scores == sorted(scores, reverse=True)


def test_filter_and_search_by_id(client: MMSearchClient, library: dict[str, Path]) -> None:
    hit = client.search(text=TEXTS[0], top_k=1).hits[0]
    resp = client.search(id=hit.id, top_k=3)
    assert hit.id not in {h.id for h in resp.hits}
    only_long = mc.parse_filter([f"source={library['long']}"])
    chunks = client.search(text="paragraph", top_k=50, filter=only_long, group_size=50).hits
    assert chunks and {h.source for h in chunks} == {str(library["long"])}
    assert len({h.segment for h in chunks}) == len(chunks) > 1
    # By default results are grouped by media: one hit for the whole long text.
    assert len(client.search(text="paragraph", top_k=50, filter=only_long).hits) == 1


def test_upsert_embed_get_delete(client: MMSearchClient) -> None:
    resp = client.upsert(
        [
            mc.text_item("a lighthouse in a storm", id="doc-7", metadata={"lang": "en"}),
            mc.pb.Item(image=b"corrupt", source="bad.png"),
            mc.image_item(image_bytes(42), source="gen42.png", metadata={"set": "e2e"}),
        ]
    )
    assert resp.written == 2 and resp.failed == 1
    assert "bad.png" in resp.results[1].error and resp.results[1].ids == []
    got = client.get(["doc-7"], with_vectors=True).points
    assert got[0].point.text == "a lighthouse in a storm" and len(got[0].vector) == 64
    assert mc.hit_to_dict(got[0].point)["metadata"] == {"lang": "en"}
    filtered = client.search(text="x", top_k=5, filter=mc.parse_filter(["set=e2e"])).hits
    assert [h.source for h in filtered] == ["gen42.png"]
    emb = client.embed([mc.query_input(text="a lighthouse in a storm"), mc.query_input(id="doc-7")])
    assert emb.dim == 64 and len(emb.embeddings) == 2
    a, b = (e.vector for e in emb.embeddings)
    assert sum(x * y for x, y in zip(a, b, strict=True)) == pytest.approx(1.0, abs=1e-4)
    assert client.delete(["doc-7"]) == 1
    with pytest.raises(grpc.RpcError) as exc:
        client.get(["doc-7"])
    assert _code(exc) == grpc.StatusCode.NOT_FOUND and "doc-7" in exc.value.details()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (pb.SearchRequest(top_k=5), grpc.StatusCode.INVALID_ARGUMENT, "query is required"),
        (
            pb.SearchRequest(query=pb.QueryInput(text=""), top_k=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "query.text",
        ),
        (
            pb.SearchRequest(query=pb.QueryInput(image=b"xx"), top_k=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "query.image",
        ),
        (pb.SearchRequest(query=pb.QueryInput(text="a"), top_k=0), grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
        (
            pb.SearchRequest(query=pb.QueryInput(text="a"), top_k=100000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_k",
        ),
        (
            pb.SearchRequest(
                query=pb.QueryInput(text="a"), top_k=5, filter=pb.Filter(must=[pb.Condition(key="x")])
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "filter.must[0]",
        ),
        (
            pb.SearchRequest(
                query=pb.QueryInput(text="a"),
                top_k=5,
                filter=pb.Filter(must=[pb.Condition(key="", keyword="v")]),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "filter.must[0].key",
        ),
        (
            pb.SearchRequest(query=pb.QueryInput(text="a"), top_k=5, modalities=[pb.MODALITY_UNSPECIFIED]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "modalities[0]",
        ),
        (pb.SearchRequest(query=pb.QueryInput(id="nope"), top_k=5), grpc.StatusCode.NOT_FOUND, "nope"),
    ],
)
def test_bad_requests_get_precise_statuses(
    server: ServerProcess, request_: pb.SearchRequest, code: grpc.StatusCode, needle: str
) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = mc.pb_grpc.SearchServiceStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            stub.Search(request_, timeout=60)
    assert _code(exc) == code
    assert needle in exc.value.details()  # type: ignore[attr-defined]


def test_oversized_request_is_resource_exhausted_and_server_carries_on(client: MMSearchClient) -> None:
    big = b"\x00" * (3 * 1024 * 1024)  # the server under test accepts 2 MiB messages
    with pytest.raises(grpc.RpcError) as exc:
        client.search(image=big, top_k=1)
    assert _code(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.search(text="still serving", top_k=1).hits


def test_second_server_on_the_same_store_is_refused(server: ServerProcess) -> None:
    proc = run_cli("serve", "--data", str(server.data_dir), "--port", "0")
    assert proc.returncode == 1
    assert "already open in another process" in proc.stderr


def test_sigterm_shuts_down_cleanly_and_data_survives(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "d")
    with MMSearchClient(srv.target) as c:
        c.upsert([mc.text_item(t) for t in TEXTS])
        points = c.stats().points
    assert srv.stop() == 0
    again = start_server(tmp_path / "d")
    try:
        with MMSearchClient(again.target) as c:
            assert c.stats().points == points == len(TEXTS)
            assert c.search(text=TEXTS[1], top_k=1).hits[0].text == TEXTS[1]
    finally:
        assert again.stop() == 0


def test_request_ids_are_echoed_and_logged(server: ServerProcess, client: MMSearchClient) -> None:
    import time

    with grpc.insecure_channel(server.target) as channel:
        stub = mc.pb_grpc.SearchServiceStub(channel)
        _, call = stub.Search.with_call(
            pb.SearchRequest(query=pb.QueryInput(text="hello"), top_k=1),
            metadata=(("x-request-id", "req-42"),),
            timeout=60,
        )
        assert ("x-request-id", "req-42") in tuple(call.initial_metadata())
        with pytest.raises(grpc.RpcError) as exc:
            stub.Search(pb.SearchRequest(top_k=1), metadata=(("x-request-id", "req-43"),), timeout=60)
        assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
        _, call = stub.Stats.with_call(pb.StatsRequest(), timeout=60)
        generated = dict(call.initial_metadata())["x-request-id"]
        assert len(generated) == 32
    deadline = time.time() + 10
    while time.time() < deadline and not any("req-43" in line for line in server.output):
        time.sleep(0.1)
    log = "".join(server.output)
    assert "req-42 /mmsearch.v1.SearchService/Search OK" in log
    assert "req-43 /mmsearch.v1.SearchService/Search INVALID_ARGUMENT" in log
    # Every log line of the call carries its id, the servicer's own included, not only the access line.
    tagged = [line for line in server.output if "[req-43]" in line]
    assert any("query is required" in line for line in tagged), tagged
    assert any("req-43 /mmsearch.v1.SearchService/Search" in line for line in tagged), tagged

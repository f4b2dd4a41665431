"""Remote ingest end to end: `ingest_remote` and `mmsearch ingest --server` against a real server.

The server's message limit is 2 MiB and its spool 1 MiB here, so files travel in chunks past the
message limit and the server's reading is held back by its pipeline (flow control) on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from encoders.bundle import load_bundle
from indexer.edge_store import EdgeStore
from indexer.journal import Journal
from indexer.manifest import ManifestError, ManifestReader
from indexer.pipeline import IngestPipeline, PipelineOptions
from indexer.quarantine import read_report
from indexer.schema import CollectionSchema
from mmsearch.client import MMSearchClient, parse_filter
from mmsearch.remote_ingest import ingest_remote
from mmsearch.v1 import search_pb2 as pb
from server.config import ServerConfig
from server.ingest import journal_path
from server.services import build_services
from tests.e2e.conftest import ServerProcess, run_cli, start_server
from tests.e2e.tenant_server import start_keyed
from tests.media import image_bytes, make_image, tone, write_wav

SMALL_LIMITS = {
    "MMSEARCH_MAX_MESSAGE_BYTES": str(2 * 1024 * 1024),
    "MMSEARCH_INGEST_SPOOL_BYTES": str(1024 * 1024),
}


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spool")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, spool: Path) -> Iterator[ServerProcess]:
    env = {**SMALL_LIMITS, "MMSEARCH_INGEST_SPOOL_DIR": str(spool)}
    srv = start_server(tmp_path_factory.mktemp("data"), env=env)
    yield srv
    srv.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[MMSearchClient]:
    with MMSearchClient(server.target, timeout=60) as c:
        c.wait_ready(30)
        yield c


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header claiming `width` x `height` pixels, over a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def noise_png(path: Path, seed: int, size: tuple[int, int]) -> Path:
    """A PNG of random pixels: it does not compress, so it is about 3 bytes a pixel."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _summary(out: Any) -> dict[str, Any]:
    return {k: v for k, v in out.to_json().items() if k != "errors"}


def test_hostile_files_are_quarantined_over_the_remote_path(client: MMSearchClient, tmp_path: Path) -> None:
    lib = tmp_path / "hostile"
    (lib / "bad").mkdir(parents=True)
    good = []
    for i in range(5):
        good.append(lib / f"good{i}.jpg")
        good[-1].write_bytes(image_bytes(1000 + i, "JPEG"))
    good.append(lib / "note.txt")
    good[-1].write_text("a lighthouse on a rocky coast at dawn")
    good.append(write_wav(lib / "tone.wav", tone(3, 1.5)))
    jpeg = image_bytes(1100, "JPEG")
    (lib / "bad" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (lib / "bad" / "empty.png").write_bytes(b"")
    rng = np.random.default_rng(7)
    (lib / "bad" / "noise.mp4").write_bytes(rng.bytes(50_000))
    (lib / "bad" / "noise.wav").write_bytes(rng.bytes(20_000))
    (lib / "bad" / "huge.png").write_bytes(png_declaring(20_000, 20_000))
    report = tmp_path / "quarantine.jsonl"

    summary = ingest_remote(client, lib, quarantine_file=report)

    assert summary.indexed == len(good), _summary(summary)
    assert summary.quarantined == 5 and summary.failed == 0, summary.errors
    assert summary.quarantine_file == str(report)
    lines = {Path(r["path"]).name: r for r in read_report(report)}
    assert set(lines) == {"truncated.jpg", "empty.png", "noise.mp4", "noise.wav", "huge.png"}
    assert all(r["status"] == "quarantined" and r["reason"] and r["stage"] for r in lines.values())
    assert lines["empty.png"]["stage"] == "read" and "empty" in lines["empty.png"]["reason"]
    assert "pixels" in lines["huge.png"]["reason"], lines["huge.png"]
    assert {Path(e.path).name for e in summary.errors} == set(lines)
    # Every good file is searchable by its own content.
    hits = client.search(image=good[0].read_bytes(), top_k=1).hits
    assert hits[0].source == str(good[0]) and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_files_larger_than_the_message_limit_arrive_in_chunks(client: MMSearchClient, tmp_path: Path) -> None:
    lib = tmp_path / "big"
    lib.mkdir()
    big = noise_png(lib / "big.png", 1, (1400, 1000))  # ~4.2 MB against a 2 MiB message limit
    assert big.stat().st_size > 2 * 1024 * 1024
    for i in range(3):
        noise_png(lib / f"mid{i}.png", 10 + i, (700, 600))  # 1.2 MB each: over the 1 MiB spool cap

    summary = ingest_remote(client, lib, chunk_bytes=256 * 1024)

    assert (summary.indexed, summary.quarantined, summary.failed) == (4, 0, 0), summary.errors
    # Each file arrived whole: its stored content hash is the hash of its bytes (noise images
    # look alike to a random model, so the check goes by source, not by similarity).
    for path in sorted(lib.iterdir()):
        hits = client.search(text="noise", filter=parse_filter([f"source={path}"]), top_k=5).hits
        assert len(hits) == 1, path
        attrs = hits[0].attributes
        assert attrs["content_hash"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert attrs["size"] == path.stat().st_size and attrs["mtime"] == pytest.approx(path.stat().st_mtime)


def test_rerun_sends_nothing_and_sync_removes_deleted_files(client: MMSearchClient, tmp_path: Path) -> None:
    lib = tmp_path / "synced"
    (lib / "sub").mkdir(parents=True)
    files = []
    for i in range(6):
        p = lib / "sub" / f"pic{i}.png"
        make_image(2000 + i).save(p)
        files.append(p)
    before = client.stats().points
    first = ingest_remote(client, lib, sync=True)
    assert first.indexed == 6 and client.stats().points == before + 6

    # Garbage now, yet unchanged by size and mtime: only a server that asked for its bytes would
    # notice (and quarantine it). The journal answers from the header alone.
    original, stat = files[0].read_bytes(), files[0].stat()
    files[0].write_bytes(b"\x00" * len(original))
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = ingest_remote(client, lib, sync=True)
    files[0].write_bytes(original)
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (again.indexed, again.unchanged, again.quarantined, again.removed) == (0, 6, 0, 0)

    files[1].unlink()
    make_image(2100).save(files[2])  # changed content: re-indexed, its old point retired
    synced = ingest_remote(client, lib, sync=True)
    assert (synced.indexed, synced.unchanged, synced.removed) == (1, 4, 1), _summary(synced)
    assert client.stats().points == before + 5
    sources = {h.source for h in client.search(image=files[2].read_bytes(), top_k=10).hits}
    assert str(files[1]) not in sources


def test_a_stream_past_its_deadline_stops_cleanly_and_a_rerun_completes(
    client: MMSearchClient, spool: Path, tmp_path: Path
) -> None:
    lib = tmp_path / "stopped"
    for i in range(400):
        folder = lib / f"p{i // 100}"
        folder.mkdir(parents=True, exist_ok=True)
        make_image(5000 + i).save(folder / f"s{i}.png")
    before = client.stats().points
    with pytest.raises(grpc.RpcError) as exc:
        ingest_remote(client, lib, timeout=1.0)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    # The stopped stream let go of its slot, its spool and its pipeline: the next one runs, and
    # what the first wrote is recognised rather than written twice.
    summary = ingest_remote(client, lib)
    assert summary.indexed + summary.unchanged == 400 and summary.quarantined == summary.failed == 0
    assert client.stats().points == before + 400
    assert list(spool.iterdir()) == []


def test_cli_ingest_with_server_prints_the_summary(server: ServerProcess, tmp_path: Path) -> None:
    lib = tmp_path / "cli"
    lib.mkdir()
    for i in range(3):
        make_image(3000 + i).save(lib / f"c{i}.png")
    (lib / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (lib / "notes.bin").write_bytes(b"\x00")
    proc = run_cli("ingest", str(lib), "--server", server.target, "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["indexed"], out["skipped"], out["quarantined"]) == (3, 1, 1), out
    assert out["items_per_s"] > 0 and [Path(e["path"]).name for e in out["errors"]] == ["broken.jpg"]


def test_protocol_errors_are_invalid_argument(server: ServerProcess) -> None:
    from mmsearch.v1 import search_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        no_start = iter([pb.IngestRequest(end=pb.IngestEnd())])
        with pytest.raises(grpc.RpcError) as exc:
            list(stub.Ingest(no_start, timeout=30))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "IngestStart" in exc.value.details()

        unasked = iter(
            [
                pb.IngestRequest(start=pb.IngestStart()),
                pb.IngestRequest(chunk=pb.FileChunk(file_id=3, data=b"x", last=True)),
            ]
        )
        with pytest.raises(grpc.RpcError) as exc:
            list(stub.Ingest(unasked, timeout=30))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "did not ask for" in exc.value.details()

        header = pb.FileHeader(file_id=0, source="/x/a.png", modality=pb.MODALITY_IMAGE, size=3, mtime=1.0)
        too_long = iter(
            [
                pb.IngestRequest(start=pb.IngestStart()),
                pb.IngestRequest(files=pb.IngestFiles(files=[header])),
                pb.IngestRequest(chunk=pb.FileChunk(file_id=0, data=b"0123456789", last=True)),
            ]
        )
        with pytest.raises(grpc.RpcError) as exc:
            list(stub.Ingest(too_long, timeout=30))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "more bytes than the 3 its header announced" in exc.value.details()

        sync_without_root = iter([pb.IngestRequest(start=pb.IngestStart(sync=True))])
        with pytest.raises(grpc.RpcError) as exc:
            list(stub.Ingest(sync_without_root, timeout=30))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _write_mixed_library(root: Path) -> Path:
    """Images, texts (one long enough for several chunks) and a sound, listed in a manifest
    with metadata of several types and one inline text row. Returns the manifest."""
    root.mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    for i, fmt in enumerate(("PNG", "JPEG", "WEBP")):
        name = f"img{i}.{fmt.lower()}"
        (root / name).write_bytes(image_bytes(4000 + i, fmt))
        rows.append({"path": name, "year": 2020 + i, "score": 0.5 + i, "tags": ["a", str(i)]})
    (root / "long.md").write_text(" ".join(f"Section {i} explains topic {i} at length." for i in range(300)))
    rows.append({"path": "long.md", "caption": "a long document"})
    write_wav(root / "tone.wav", tone(1, 2.0))
    rows.append({"path": "tone.wav", "id": "sound-1"})
    rows.append({"text": "an inline caption about harbours", "lang": "en"})
    manifest = root / "library.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def _read_store(data_dir: Path, schema: CollectionSchema) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    store = EdgeStore(data_dir, schema)
    try:
        ids: list[str] = []
        offset = None
        while True:
            page, offset = store.scroll(limit=256, offset=offset)
            ids += [p.id for p in page]
            if offset is None:
                break
        points = store.get(ids, with_vectors=True)
    finally:
        store.close()
    return {p.id: (p.payload, np.asarray(p.vector)) for p in points}


def test_remote_and_local_ingest_give_the_same_points(tmp_path: Path) -> None:
    manifest = _write_mixed_library(tmp_path / "lib")
    local_dir, remote_dir = tmp_path / "local", tmp_path / "remote"

    services = build_services(ServerConfig(data_dir=local_dir, bundle="tiny", device="cpu"))
    try:
        journal = Journal(journal_path(ServerConfig(data_dir=local_dir)))
        with IngestPipeline(services.embedder, services.store, PipelineOptions(), journal=journal) as p:
            local = p.run(ManifestReader(manifest))
        journal.close()
    finally:
        services.close()

    srv = start_server(remote_dir, env=SMALL_LIMITS)
    try:
        with MMSearchClient(srv.target) as c:
            remote = ingest_remote(c, manifest=manifest, chunk_bytes=4096)
    finally:
        assert srv.stop() == 0

    assert (local.indexed, local.points) == (remote.indexed, remote.points) == (6, local.points)
    assert local.failed == remote.failed == local.quarantined == remote.quarantined == 0
    bundle = load_bundle("tiny", device="cpu")
    schema = CollectionSchema(bundle_id=bundle.bundle_id, dim=bundle.embed_dim)
    here, there = _read_store(local_dir, schema), _read_store(remote_dir, schema)
    assert len(here) == local.points and set(here) == set(there)
    for pid, (payload, vector) in here.items():
        assert there[pid][0] == payload, pid
        np.testing.assert_allclose(there[pid][1], vector, atol=1e-5)
    metas = [p["meta"] for p, _ in here.values() if p.get("meta", {}).get("year") == 2021]
    assert metas and isinstance(metas[0]["year"], int)  # an integer stays an integer on the wire


def test_each_tenant_ingests_into_its_own_points_and_journal(tmp_path: Path) -> None:
    lib = tmp_path / "shared"
    lib.mkdir()
    for i in range(4):
        make_image(6000 + i).save(lib / f"t{i}.png")
    keyed = start_keyed(
        tmp_path,
        {"acme": ("acme", "read,write"), "globex": ("globex", "read,write"), "reader": ("acme", "read")},
    )
    try:
        with pytest.raises(grpc.RpcError) as exc:
            ingest_remote(keyed.client("reader"), lib)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED

        acme = ingest_remote(keyed.client("acme"), lib)
        assert acme.indexed == 4
        # The same files for another tenant: its own journal and ids, so indexed again, not
        # skipped as unchanged on the strength of acme's journal.
        globex = ingest_remote(keyed.client("globex"), lib)
        assert (globex.indexed, globex.unchanged) == (4, 0)
        assert ingest_remote(keyed.client("acme"), lib).unchanged == 4
        assert keyed.client("acme").stats().points == keyed.client("globex").stats().points == 4
        hit = keyed.client("globex").search(image=(lib / "t0.png").read_bytes(), top_k=1).hits[0]
        assert hit.source == str(lib / "t0.png") and hit.attributes["tenant"] == "globex"
    finally:
        keyed.stop()


def test_bad_manifest_rows_fail_alone_and_too_many_stop_the_run(
    client: MMSearchClient, tmp_path: Path
) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes(7000))
    manifest = tmp_path / "rows.jsonl"
    rows = [
        {"path": "a.png", "caption": "first"},
        {"path": "missing.png"},
        {"text": "an inline row", "year": 1999},
        {"path": "a.png", "text": "both"},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = tmp_path / "report.jsonl"
    summary = ingest_remote(client, manifest=manifest, quarantine_file=report)
    assert (summary.indexed, summary.failed, summary.quarantined) == (2, 2, 0), _summary(summary)
    assert sorted(e.path for e in summary.errors) == ["rows.jsonl:2", "rows.jsonl:4"]
    assert {r["stage"] for r in read_report(report)} == {"manifest"}

    with pytest.raises(ManifestError, match="more than 1 rows"):
        ingest_remote(client, manifest=manifest, max_errors=1)

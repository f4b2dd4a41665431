"""`mmsearch ingest PATH --ray ADDRESS --server HOST:PORT`: a mixed library of 300-odd files
through a local Ray instance (2 CPUs, no dashboard) into a server's embedded store by
WritePoints gives the local pipeline's points (ids, payloads, vectors), summary and quarantine
report; a re-run reads nothing."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from encoders.bundle import ModelBundle
from indexer.edge_store import EdgeStore
from indexer.ingest_local import IngestRequest, ingest_library
from indexer.pipeline import PipelineOptions
from indexer.quarantine import read_report
from indexer.ray_ingest import ray_ingest
from indexer.schema import CollectionSchema
from mmsearch.client import MMSearchClient
from mmsearch.ray_cli import ServerEmbedder, ServerTarget
from server.config import ServerConfig
from server.services import build_embedder
from tests.e2e.conftest import REPO, start_server
from tests.media import FORMATS, TEXTS, image_bytes, make_image, tone, write_audio, write_video

ray = pytest.importorskip("ray")

HOSTILE = {"truncated.jpg", "empty.png", "noise.mp4", "noise.wav", "bomb.png", "latin1.txt"}


def _png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring a huge image (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def write_mixed_library(root: Path) -> int:
    """Images in every format, short and long texts, audio, videos, hostile files and one
    unsupported file. Returns the number of media files."""
    exts = list(FORMATS)
    for i in range(200):
        ext = exts[i % len(exts)]
        folder = root / "images" / f"set{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:03d}{ext}").write_bytes(image_bytes(i, FORMATS[ext]))
    (root / "texts").mkdir()
    for i in range(90):
        body = f"{TEXTS[i % len(TEXTS)]} (note {i})"
        if i % 10 == 0:  # a long document of many chunks
            body = " ".join(f"Paragraph {k} of document {i}: {TEXTS[k % len(TEXTS)]}." for k in range(60))
        (root / "texts" / f"t{i:03d}.txt").write_text(body)
    for i in range(4):
        write_audio(root / "audio" / f"a{i}.wav", tone(i, 3.0, seed=i))
    for i in range(3):
        frames = [make_image(10 * i + k, size=(96, 64)) for k in range(4)]
        write_video(root / "video" / f"v{i}.mp4", frames, fps=2, audio=tone(i, 2.0) if i else None)
    bad = root / "bad"
    bad.mkdir()
    jpeg = io.BytesIO()
    make_image(7, size=(160, 120)).save(jpeg, format="JPEG")
    (bad / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (bad / "empty.png").write_bytes(b"")
    rng = np.random.default_rng(0)
    (bad / "noise.mp4").write_bytes(rng.bytes(4096))
    (bad / "noise.wav").write_bytes(rng.bytes(4096))
    (bad / "bomb.png").write_bytes(_png_declaring(30000, 30000))
    (bad / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (root / "notes.bin").write_bytes(b"\x00\x01")  # not a media file: skipped
    return 200 + 90 + 4 + 3 + len(HOSTILE)


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


def _ingest_cli(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "mmsearch", "ingest", *args, "--json", "--no-progress"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-4000:]
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def _stored(data_dir: Path, schema: CollectionSchema) -> dict[str, Any]:
    """Every point of an embedded store, with its dense vector."""
    store = EdgeStore(data_dir, schema)
    try:
        ids, offset = [], None
        while True:
            page, offset = store.scroll(limit=256, offset=offset)
            ids += [p.id for p in page]
            if offset is None:
                break
        return {p.id: p for p in store.get(ids, with_vectors=True)}
    finally:
        store.close()


def test_ray_ingest_into_a_servers_store_matches_the_local_pipeline(
    tiny_bundle: ModelBundle, ray_address: str, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    files = write_mixed_library(lib)
    assert files >= 300

    # The local pipeline on the same files, with the embedder a server builds.
    embedder, query_decoder = build_embedder(tiny_bundle, ServerConfig())
    query_decoder.close()
    schema = CollectionSchema(tiny_bundle.bundle_id, tiny_bundle.embed_dim)
    local_store = EdgeStore(tmp_path / "local", schema)
    try:
        local = ingest_library(
            embedder,
            local_store,
            IngestRequest(path=lib, quarantine=tmp_path / "local-q.jsonl", progress=False),
            PipelineOptions(decode_workers=2),
        )
    finally:
        embedder.close()
        local_store.close()
    expected = _stored(tmp_path / "local", schema)
    assert local.indexed == files - len(HOSTILE) and local.quarantined == len(HOSTILE)

    server = start_server(tmp_path / "served")
    journal = tmp_path / "client" / "journal.sqlite"
    try:
        first = _ingest_cli(
            str(lib), "--ray", ray_address, "--server", server.target, "--journal", str(journal)
        )
        # Again, from this process: the driver's journal skips every file before Ray.
        with MMSearchClient(server.target) as client:
            again = ray_ingest(
                ServerEmbedder(ServerConfig()),
                ServerTarget(client, tiny_bundle.bundle_id),
                IngestRequest(path=lib, journal=journal, progress=False),
            )
    finally:
        assert server.stop() == 0

    keys = ("indexed", "unchanged", "failed", "quarantined", "skipped", "points", "removed")
    assert {k: first[k] for k in keys} == {k: getattr(local, k) for k in keys}
    assert sorted(map(_error, first["errors"])) == sorted(
        (e.path, e.reason, e.stage, e.status) for e in local.errors
    )
    report = {Path(str(r["path"])).name: r for r in read_report(first["quarantine_file"])}
    assert set(report) == HOSTILE
    assert report["empty.png"]["stage"] == "read" and "empty" in report["empty.png"]["reason"]
    assert "too large" in report["bomb.png"]["reason"] and report["bomb.png"]["stage"] == "decode"
    assert "not an accepted video format" in report["noise.mp4"]["reason"]
    assert "UTF-8" in report["latin1.txt"]["reason"]
    assert (again.indexed, again.unchanged, again.quarantined) == (0, local.indexed, len(HOSTILE))

    stored = _stored(tmp_path / "served", schema)
    assert stored.keys() == expected.keys()
    for pid, want in expected.items():
        got = stored[pid]
        assert got.payload == want.payload, pid
        assert got.vector is not None and want.vector is not None
        np.testing.assert_allclose(got.vector, want.vector, atol=1e-5)
    modalities = {p.payload["modality"] for p in stored.values()}
    assert modalities == {"image", "text", "audio", "video"}


def _error(e: dict[str, Any]) -> tuple[str, str, str, str]:
    return (e["path"], e["reason"], e["stage"], e["status"])

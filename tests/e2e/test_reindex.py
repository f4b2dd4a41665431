"""A model swap without downtime on a running server: `mmsearch reindex --bundle NEW --server`
rebuilds the index under the new bundle while searches (and a write) keep going, then switches;
no call fails, and from the switch on the server answers with the new bundle."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from encoders.bundle import load_bundle, save_bundle
from encoders.decode import MediaDecoder
from encoders.embed import Embedder
from encoders.encoder import Encoder
from indexer.edge_store import EdgeStore
from indexer.pipeline import IngestPipeline, PipelineOptions
from indexer.schema import CollectionSchema
from indexer.sources import SourceFile
from mmsearch import client as mc
from mmsearch.client import MMSearchClient
from tests.e2e.conftest import ServerProcess, run_cli, start_server
from tests.media import TEXTS, image_bytes


@pytest.fixture(scope="module")
def new_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    changed = load_bundle("tiny", device="cpu")
    with torch.no_grad():
        for p in changed.model.parameters():
            p.add_(0.01)
    path = save_bundle(changed, tmp_path_factory.mktemp("bundle") / "next")
    return path, load_bundle(str(path), device="cpu").bundle_id  # the id of the changed weights


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> tuple[Path, Path]:
    """A data directory holding a small library indexed with the tiny bundle."""
    root = tmp_path_factory.mktemp("reindex")
    lib, data = root / "lib", root / "data"
    lib.mkdir()
    sources = []
    for i in range(8):
        p = lib / f"img{i}.png"
        p.write_bytes(image_bytes(i))
        sources.append(SourceFile.from_path(p))
    for i, text in enumerate(TEXTS):
        p = lib / f"t{i}.txt"
        p.write_text(text + "\n")
        sources.append(SourceFile.from_path(p))
    store = EdgeStore(data, CollectionSchema(encoder.bundle.bundle_id, encoder.dim))
    embedder = Embedder(encoder, MediaDecoder(workers=1, sample_rate=encoder.decode_sample_rate))
    try:
        with IngestPipeline(embedder, store, PipelineOptions(batch_size=8)) as pipeline:
            assert pipeline.run(sources).indexed == len(sources)
    finally:
        embedder.close()
        store.close()
    return lib, data


@pytest.fixture(scope="module")
def server(indexed: tuple[Path, Path]) -> Iterator[ServerProcess]:
    srv = start_server(indexed[1])
    yield srv
    srv.stop()


def test_searches_never_fail_during_a_reindex_and_stats_then_report_the_new_bundle(
    server: ServerProcess, new_bundle: tuple[Path, str], encoder: Encoder
) -> None:
    old_id, (bundle_dir, new_id) = encoder.bundle.bundle_id, new_bundle
    errors: list[str] = []
    seen: list[str] = []
    stop = threading.Event()

    def searches() -> None:
        with MMSearchClient(server.target, timeout=30) as c:
            n = 0
            while not stop.is_set():
                try:
                    r = c.search(text=TEXTS[n % len(TEXTS)], top_k=5)
                    if not r.hits:
                        errors.append(f"search {n}: no hits")
                    seen.append(r.bundle_id)
                except grpc.RpcError as exc:
                    errors.append(f"search {n}: {exc.code().name}: {exc.details()}")
                n += 1

    written: list[str] = []

    def writes() -> None:
        # Writes all along the reindex: each must be in the new index after the switch.
        with MMSearchClient(server.target, timeout=60) as c:
            k = 0
            while not stop.is_set():
                try:
                    c.upsert([mc.text_item(f"note {k} written during the reindex", id=f"late-{k}")])
                    written.append(f"late-{k}")
                except grpc.RpcError as exc:
                    errors.append(f"upsert {k}: {exc.code().name}: {exc.details()}")
                k += 1
                time.sleep(0.05)

    with MMSearchClient(server.target, timeout=30) as client:
        client.wait_ready(30)
        before = client.stats()
        assert before.bundle_id == old_id
        threads = [threading.Thread(target=searches), threading.Thread(target=writes)]
        for t in threads:
            t.start()
        try:
            proc = run_cli("reindex", "--bundle", str(bundle_dir), "--server", server.target, timeout=240)
            time.sleep(0.5)  # searches and writes after the switch, too
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "switched" in proc.stdout
        assert errors == []
        assert len(seen) > 20 and len(written) > 5
        # Each search was answered by one bundle; once the new one answered, only the new one.
        assert seen[0] == old_id and seen[-1] == new_id
        first_new = seen.index(new_id)
        assert set(seen[first_new:]) == {new_id}
        after = client.stats()
        assert after.bundle_id == new_id and after.dim == before.dim
        # Every item again, and every write made meanwhile (the catch-up took those before the
        # switch; the write gate held those during it; later ones went to the new index).
        assert after.points == before.points + len(written)
        got = client.get(written).points
        assert len(got) == len(written)
        hit = client.search(text="note 0 written during the reindex", top_k=1)
        assert hit.bundle_id == new_id and hit.hits[0].text.startswith("note ")

"""`mmsearch reindex` below the server: rebuilding every stored item under another bundle into a
new collection, the catch-up with writes made meanwhile, the atomic switch, and dropping the old
collection, on the embedded store and on Qdrant (in-process mode), legacy layouts included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from qdrant_client import QdrantClient

from encoders.bundle import ModelBundle, load_bundle, save_bundle
from encoders.decode import MediaDecoder
from encoders.embed import Embedder
from encoders.encoder import Encoder
from encoders.modality import Modality
from indexer import edge_layout
from indexer.collections import BUNDLE_REF, EdgeCollections, QdrantCollections
from indexer.edge_store import EdgeStore
from indexer.pipeline import IngestPipeline, PipelineOptions
from indexer.qdrant_aliases import live_alias
from indexer.qdrant_store import QdrantStore
from indexer.reindex import Phase, Reindexer, ReindexError, ReindexOptions, ReindexProgress, drop_old
from indexer.reindex_items import rebuild_text, stored_items
from indexer.schema import CollectionSchema, Key
from indexer.sources import SourceFile
from indexer.store import BundleMismatchError, StoreError, VectorStore
from indexer.tenancy import tenant_store
from tests.media import image_bytes, tone, write_audio

OPTIONS = ReindexOptions(pipeline=PipelineOptions(batch_size=8, write_batch=16))
LONG = "\n\n".join(f"Paragraph {i} describes item number {i} in some detail." for i in range(60))


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ModelBundle]:
    """A second embedding space: tiny with every weight nudged, saved as a bundle directory."""
    changed = load_bundle("tiny", device="cpu")
    with torch.no_grad():
        for p in changed.model.parameters():
            p.add_(0.01)
    path = save_bundle(changed, tmp_path_factory.mktemp("bundle2") / "b2")
    return str(path), load_bundle(str(path), device="cpu")


@pytest.fixture
def embedders(encoder: Encoder, other_bundle: tuple[str, ModelBundle]) -> Iterator[tuple[Embedder, Embedder]]:
    decoder = MediaDecoder(workers=1, sample_rate=encoder.decode_sample_rate)
    old = Embedder(encoder, decoder)
    new = Embedder(Encoder(other_bundle[1], batch_size=8), decoder)
    yield old, new
    decoder.close()


def _library(root: Path) -> list[SourceFile]:
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(3):
        p = root / f"img{i}.png"
        p.write_bytes(image_bytes(i))
        files.append(SourceFile.from_path(p, metadata={"n": i}))
    note = root / "note.txt"
    note.write_text("  a text file with leading spaces\nand a trailing newline\n")
    files.append(SourceFile.from_path(note))
    write_audio(root / "clip.wav", tone(1, 2.0))
    files.append(SourceFile.from_path(root / "clip.wav"))
    inline = "  inline text with   odd spacing\t and a tail \n"
    files.append(SourceFile("manifest.jsonl#a", Modality.TEXT, len(inline), 0.0, text=inline))
    files.append(
        SourceFile("manifest.jsonl#long", Modality.TEXT, len(LONG), 0.0, text=LONG, external_id="long-1")
    )
    return files


def _ingest(
    embedder: Embedder, store: VectorStore, sources: list[SourceFile], namespace: str = "default"
) -> None:
    view = tenant_store(store, namespace)
    with IngestPipeline(embedder, view, OPTIONS.pipeline, namespace=namespace) as p:
        summary = p.run(sources)
    assert summary.failed == summary.quarantined == 0, summary.errors


def _points(store: VectorStore) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    offset = None
    while True:
        page, offset = store.scroll(limit=256, offset=offset)
        out |= {p.id: p.payload for p in page}
        if offset is None:
            return out


def _without_bundle(payloads: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    return {i: {k: v for k, v in p.items() if k != Key.BUNDLE_ID} for i, p in payloads.items()}


def test_chunks_rebuild_to_the_exact_text(encoder: Encoder) -> None:
    import hashlib

    texts = [
        "plain words",
        "  leading and trailing whitespace \n",
        "windows\r\nline endings\r\n",
        LONG,
        "word " + "x" * 400 + " tail\n",  # a word longer than a chunk: pieces with gaps
        "\tcolumns\tseparated\tby\ttabs",
    ]
    for text in texts:
        chunks = encoder.chunk(text)
        payloads = [{"text": c.text, "char_start": c.start, "char_end": c.end} for c in chunks]
        digest = hashlib.sha256(text.encode()).hexdigest()
        assert rebuild_text(payloads, digest) == text
        # A chunk missing, or another text's hash: nothing is guessed.
        assert rebuild_text(payloads, hashlib.sha256(b"other").hexdigest()) is None
        if len(payloads) > 2:
            assert rebuild_text(payloads[:1] + payloads[2:], digest) is None


def test_reindex_rebuilds_every_item_with_the_same_ids_and_switches_the_embedded_store(
    embedders: tuple[Embedder, Embedder], other_bundle: tuple[str, ModelBundle], tmp_path: Path
) -> None:
    old_emb, new_emb = embedders
    data = tmp_path / "data"
    old_schema = CollectionSchema(old_emb.encoder.bundle.bundle_id, old_emb.dim)
    live = EdgeStore(data, old_schema)  # the legacy layout: the collection in the data directory
    live.create_field_index("meta.n", "integer")
    lib = _library(tmp_path / "lib")
    _ingest(old_emb, live, lib)
    _ingest(old_emb, live, [SourceFile.from_path(tmp_path / "lib" / "img0.png")], namespace="acme")
    (tmp_path / "lib" / "note.txt").unlink()  # rebuilt from its chunks instead
    before = _points(live)
    collections = EdgeCollections(data)
    seen: list[ReindexProgress] = []
    r = Reindexer(
        collections, live, new_emb, bundle_ref=other_bundle[0], options=OPTIONS, on_progress=seen.append
    )
    r.build()
    assert r.settle() == 0
    assert r.switch() and r.report.missing_count == 0
    assert {p.phase for p in seen} >= {Phase.BUILD, Phase.SWITCH, Phase.DONE}
    assert r.report.items == len(lib) + 1 and r.report.indexed == len(lib) + 1
    after = _points(r.new_store)
    # Every point is there again under its id, with the same payload but for the bundle.
    assert _without_bundle(after) == _without_bundle(before)
    assert {p[Key.BUNDLE_ID] for p in after.values()} == {new_emb.encoder.bundle.bundle_id}
    assert r.new_store.field_indexes()["meta.n"] == "integer"
    r.close()
    live.close()
    # Opening the data directory now opens the new collection; the old one is kept beside it.
    assert collections.live() == new_emb.encoder.bundle.bundle_id
    assert collections.names() == [edge_layout.ROOT, collections.live()]
    assert collections.metadata(collections.live())[BUNDLE_REF] == other_bundle[0]
    with pytest.raises(BundleMismatchError):
        EdgeStore(data, old_schema)
    reopened = EdgeStore(data, r.new_store.schema)
    assert reopened.count() == len(before)
    reopened.close()
    assert drop_old(collections) == [edge_layout.ROOT]
    assert collections.names() == [collections.live()] and not (data / "shard").exists()


def test_items_without_a_source_refuse_the_switch_unless_allowed(
    embedders: tuple[Embedder, Embedder], other_bundle: tuple[str, ModelBundle], tmp_path: Path
) -> None:
    old_emb, new_emb = embedders
    data = tmp_path / "data"
    live = EdgeStore(data, CollectionSchema(old_emb.encoder.bundle.bundle_id, old_emb.dim))
    lib = _library(tmp_path / "lib")
    _ingest(old_emb, live, lib)
    gone = tmp_path / "lib" / "img1.png"
    gone.unlink()
    collections = EdgeCollections(data)
    r = Reindexer(collections, live, new_emb, bundle_ref=other_bundle[0], options=OPTIONS)
    r.build()
    assert not r.switch()
    assert r.report.refused and "--allow-missing" in r.report.refused
    (missing,) = r.report.missing
    assert (missing.source, missing.reason, missing.modality) == (str(gone), "source file is gone", "image")
    assert collections.live() == edge_layout.ROOT  # nothing moved
    r.close()
    # Run again with --allow-missing: it resumes (nothing embedded twice) and switches.
    again = Reindexer(
        collections, live, new_emb, bundle_ref=other_bundle[0], options=ReindexOptions(allow_missing=True)
    )
    again.build()
    assert again.switch() and again.report.indexed == 0 and again.report.unchanged == len(lib) - 1
    assert again.report.missing_count == 1
    assert again.new_store.count() == live.count() - 1
    again.close()
    live.close()


def test_the_catch_up_brings_in_writes_made_during_the_build(
    embedders: tuple[Embedder, Embedder], other_bundle: tuple[str, ModelBundle], tmp_path: Path
) -> None:
    old_emb, new_emb = embedders
    data = tmp_path / "data"
    live = EdgeStore(data, CollectionSchema(old_emb.encoder.bundle.bundle_id, old_emb.dim))
    lib = _library(tmp_path / "lib")
    _ingest(old_emb, live, lib[:4])
    r = Reindexer(EdgeCollections(data), live, new_emb, bundle_ref=other_bundle[0], options=OPTIONS)
    r.build()
    # Meanwhile the live collection gets an item and loses one.
    _ingest(old_emb, live, lib[4:5])
    doomed = next(i for i in stored_items(live) if i.payload.source == str(lib[0].path))
    live.delete(list(doomed.point_ids))
    changed = r.settle()
    assert changed == 2
    assert _without_bundle(_points(r.new_store)) == _without_bundle(_points(live))
    assert r.settle() == 0  # level now
    assert r.switch()
    r.close()
    live.close()


def test_reindex_refuses_the_bundle_already_in_use(
    embedders: tuple[Embedder, Embedder], tmp_path: Path
) -> None:
    old_emb, _ = embedders
    live = EdgeStore(tmp_path / "d", CollectionSchema(old_emb.encoder.bundle.bundle_id, old_emb.dim))
    with pytest.raises(ReindexError, match="already uses bundle"):
        Reindexer(EdgeCollections(tmp_path / "d"), live, old_emb, bundle_ref="tiny")
    live.close()


def test_a_legacy_qdrant_collection_migrates_to_the_live_alias(
    embedders: tuple[Embedder, Embedder], other_bundle: tuple[str, ModelBundle], tmp_path: Path
) -> None:
    old_emb, new_emb = embedders
    client = QdrantClient(location=":memory:")
    old_schema = CollectionSchema(old_emb.encoder.bundle.bundle_id, old_emb.dim, name="media")
    live = QdrantStore(":memory:", old_schema, client=client)  # a real collection named "media"
    assert live.collection == "media"
    lib = _library(tmp_path / "lib")
    _ingest(old_emb, live, lib)
    collections = QdrantCollections(":memory:", "media", client=client)
    r = Reindexer(collections, live, new_emb, bundle_ref=other_bundle[0], options=OPTIONS)
    r.build()
    assert r.switch()
    new_name = f"media-{new_emb.encoder.bundle.bundle_id}"
    assert isinstance(r.new_store, QdrantStore) and r.new_store.collection == new_name
    aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
    assert aliases == {live_alias("media"): new_name}
    # A store opened on the configured name now resolves to the new collection; the old bundle
    # is refused there, and the old collection still answers under its own name.
    new_schema = CollectionSchema(new_emb.encoder.bundle.bundle_id, new_emb.dim, name="media")
    assert QdrantStore(":memory:", new_schema, client=client).collection == new_name
    with pytest.raises(BundleMismatchError):
        QdrantStore(":memory:", old_schema, client=client)
    assert live.count() == r.new_store.count() > 0
    assert _without_bundle(_points(live)) == _without_bundle(_points(r.new_store))
    # A second swap moves the alias again (back to a third bundle would be the same call).
    collections.switch("media")
    assert collections.live() == "media"
    collections.switch(new_name)
    with pytest.raises(StoreError, match="is live"):
        collections.drop(new_name)
    assert drop_old(collections) == ["media"]
    assert collections.names() == [new_name]
    r.close()

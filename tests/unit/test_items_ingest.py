from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from encoders.embed import Embedder
from encoders.encoder import Encoder
from encoders.modality import Modality
from indexer.filters import FilterSpec, Match
from indexer.ingest_local import IngestRequest, ingest_library
from indexer.inputs import ItemInput
from indexer.items import ItemIndexer
from indexer.schema import CollectionSchema
from indexer.store import VectorStore
from tests.media import TEXTS, image_bytes, write_library

MakeStore = Callable[..., VectorStore]


def _indexer(encoder: Encoder, store_factory: MakeStore) -> ItemIndexer:
    schema = CollectionSchema(bundle_id=encoder.bundle.bundle_id, dim=encoder.dim)
    return ItemIndexer(Embedder(encoder), store_factory(schema))


def test_a_corrupt_item_fails_alone(encoder: Encoder, store_factory: MakeStore) -> None:
    ix = _indexer(encoder, store_factory)
    items = [
        ItemInput(Modality.IMAGE, image_bytes(1), source="a.png"),
        ItemInput(Modality.IMAGE, b"garbage", source="bad.png"),
        ItemInput(Modality.TEXT, "hello there", source="h.txt"),
        ItemInput(Modality.TEXT, "   ", source="blank.txt"),
        ItemInput(Modality.IMAGE, "text where bytes belong", source="wrong.png"),
    ]
    out = ix.index(items)
    assert [o.error is None for o in out] == [True, False, True, False, False]
    assert "bad.png" in (out[1].error or "") and "not a recognised image format" in (out[1].error or "")
    assert "empty" in (out[3].error or "")
    assert "expected encoded image bytes" in (out[4].error or "")
    assert ix.store.count() == 2
    stored = ix.store.get(out[0].ids)[0].payload
    assert stored["width"] == 96 and stored["height"] == 80 and stored["modality"] == "image"


def test_reindexing_the_same_content_adds_nothing(encoder: Encoder, store_factory: MakeStore) -> None:
    ix = _indexer(encoder, store_factory)
    items = [ItemInput(Modality.TEXT, t, source=f"t{i}") for i, t in enumerate(TEXTS)]
    first = ix.index(items)
    again = ix.index(items)
    assert not any(o.unchanged for o in first)
    assert all(o.unchanged for o in again)
    assert [o.ids for o in first] == [o.ids for o in again]
    assert ix.store.count() == len(TEXTS)


def test_long_text_becomes_overlapping_chunks_of_one_media(
    encoder: Encoder, store_factory: MakeStore
) -> None:
    ix = _indexer(encoder, store_factory)
    text = " ".join(f"word{i}" for i in range(400))
    (out,) = ix.index([ItemInput(Modality.TEXT, text, source="long.txt")])
    assert len(out.ids) > 3
    points = ix.store.get(out.ids)
    assert {p.payload["media_id"] for p in points} == {out.media_id}
    segments = sorted(points, key=lambda p: p.payload["segment"])
    assert [p.payload["segment"] for p in segments] == list(range(len(out.ids)))
    # Every word is stored in some chunk: nothing was truncated away.
    stored_words = {w for p in points for w in p.payload["text"].split()}
    assert stored_words == set(text.split())


def test_caller_id_rewritten_with_shorter_text_drops_old_chunks(
    encoder: Encoder, store_factory: MakeStore
) -> None:
    ix = _indexer(encoder, store_factory)
    long = " ".join(f"word{i}" for i in range(400))
    (first,) = ix.index([ItemInput(Modality.TEXT, long, id="doc-1")])
    (second,) = ix.index([ItemInput(Modality.TEXT, "now short", id="doc-1")])
    assert len(first.ids) > 1 and len(second.ids) == 1
    assert ix.store.count(FilterSpec(must=(Match("external_id", "doc-1"),))) == 1


def test_metadata_is_stored_and_filterable(encoder: Encoder, store_factory: MakeStore) -> None:
    ix = _indexer(encoder, store_factory)
    ix.index(
        [
            ItemInput(Modality.TEXT, "alpha", metadata={"lang": "en", "year": 2021}),
            ItemInput(Modality.TEXT, "beta", metadata={"lang": "de", "year": 2019}),
        ]
    )
    q = encoder.embed_texts(["alpha"])[0]
    hits = ix.store.query(q, limit=5, filter=FilterSpec(must=(Match("meta.lang", "de"),)))
    assert [h.payload["text"] for h in hits] == ["beta"]


def test_ingest_folder_summary_and_rerun(encoder: Encoder, store_factory: MakeStore, tmp_path: Path) -> None:
    ix = _indexer(encoder, store_factory)
    paths = write_library(tmp_path / "lib")
    request = IngestRequest(path=tmp_path / "lib", journal=tmp_path / "journal.sqlite", progress=False)
    summary = ingest_library(ix.embedder, ix.store, request)
    assert summary.indexed == 6 + len(TEXTS) + 1  # images, texts, the long text
    assert summary.quarantined == 2 and summary.skipped == 1
    failed = {e.path: e.reason for e in summary.errors}
    assert set(failed) == {str(paths["corrupt"]), str(paths["truncated"])}
    assert "truncated" in failed[str(paths["truncated"])] or "corrupt" in failed[str(paths["truncated"])]
    points = ix.store.count()
    assert summary.points == points > summary.indexed  # the long text has several chunks

    rerun = ingest_library(ix.embedder, ix.store, request)
    # Quarantined files are remembered in the journal until they change: reported, not retried.
    assert rerun.indexed == 0 and rerun.unchanged == summary.indexed and rerun.quarantined == 2
    assert ix.store.count() == points

    # The payload records file attributes.
    hit = ix.store.query(encoder.embed_texts([TEXTS[0]])[0], limit=1)[0]
    assert hit.payload["source"] == str(paths["t0"])
    assert hit.payload["size"] == paths["t0"].stat().st_size and hit.payload["mtime"] > 0


def test_unreadable_file_is_listed_and_skipped(
    encoder: Encoder, store_factory: MakeStore, tmp_path: Path
) -> None:
    ix = _indexer(encoder, store_factory)
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "ok.txt").write_text("fine")
    (lib / "bad.txt").write_bytes(b"\xff\xfe\xfd not utf8")
    (lib / "dangling.png").symlink_to(lib / "missing.png")
    summary = ingest_library(ix.embedder, ix.store, IngestRequest(path=lib, progress=False))
    assert summary.indexed == 1 and summary.quarantined == 2
    reasons = " ".join(e.reason for e in summary.errors)
    assert "not valid UTF-8" in reasons and "cannot read file" in reasons


def test_image_embedding_matches_direct_encoding(encoder: Encoder, store_factory: MakeStore) -> None:
    ix = _indexer(encoder, store_factory)
    (out,) = ix.index([ItemInput(Modality.IMAGE, image_bytes(5))])
    stored = ix.store.get(out.ids, with_vectors=True)[0].vector
    from encoders.media import decode_image

    direct = encoder.embed_images([decode_image(image_bytes(5))])[0]
    assert stored is not None
    np.testing.assert_allclose(stored, direct, atol=1e-5)

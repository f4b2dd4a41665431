"""Manifests: rows -> sources with metadata, bad rows by line number, the error budget, and
payload indexes with filters on the declared fields."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from encoders.decode import MediaDecoder
from encoders.embed import Embedder
from encoders.encoder import Encoder
from encoders.modality import Modality
from indexer.edge_store import EdgeStore
from indexer.filters import FilterSpec, Match, Range
from indexer.ingest_local import IngestRequest, ingest_library
from indexer.manifest import FieldKind, IndexField, ManifestError, ManifestReader, Rejected
from indexer.pipeline import PipelineOptions
from indexer.quarantine import read_report
from indexer.schema import CollectionSchema
from indexer.sources import SourceFile
from tests.media import image_bytes


@pytest.fixture
def library(tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    (lib / "img").mkdir(parents=True)
    for i in range(3):
        (lib / "img" / f"cat{i}.png").write_bytes(image_bytes(i))
    return lib


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_rows_become_sources_and_bad_rows_name_their_line(library: Path) -> None:
    manifest = _jsonl(
        library / "library.jsonl",
        [
            {"path": "img/cat0.png", "caption": "a cat", "tags": ["cat", "pet"], "year": 2021},
            {"path": str(library / "img" / "cat1.png"), "metadata": {"caption": "another"}, "id": "c1"},
            {"text": "an inline note", "lang": "en"},
            "{not json",
            {"path": "img/missing.png"},
            {"path": "img/cat2.png", "text": "both"},
            "",
            {"path": "img/cat2.png", "modality": "sound"},
            [1, 2],
        ],
    )
    items = list(ManifestReader(manifest))
    sources = [i for i in items if isinstance(i, SourceFile)]
    rejected = {r.origin: r.reason for r in items if isinstance(r, Rejected)}
    assert [s.metadata for s in sources] == [
        {"caption": "a cat", "tags": ["cat", "pet"], "year": 2021},
        {"caption": "another"},
        {"lang": "en"},
    ]
    assert sources[0].source == str(library / "img" / "cat0.png") and sources[0].modality == Modality.IMAGE
    assert sources[1].external_id == "c1"
    assert sources[2].text == "an inline note" and sources[2].path is None
    assert set(rejected) == {
        "library.jsonl:4",
        "library.jsonl:5",
        "library.jsonl:6",
        "library.jsonl:8",
        "library.jsonl:9",
    }
    assert "not valid JSON" in rejected["library.jsonl:4"]
    assert "missing file" in rejected["library.jsonl:5"]
    assert "exactly one of" in rejected["library.jsonl:6"]
    assert "unknown modality 'sound'" in rejected["library.jsonl:8"]
    assert "expected a JSON object" in rejected["library.jsonl:9"]


def test_csv_rows_with_declared_types(library: Path) -> None:
    manifest = library / "library.csv"
    manifest.write_text("path,caption,year\nimg/cat0.png,a cat,2021\nimg/cat1.png,a kitten,soon\n")
    items = list(ManifestReader(manifest, field_kinds={"year": FieldKind.INTEGER}))
    assert isinstance(items[0], SourceFile) and items[0].metadata == {"caption": "a cat", "year": 2021}
    assert isinstance(items[1], Rejected) and items[1].origin == "library.csv:3"
    assert "declared integer" in items[1].reason


def test_past_the_budget_the_read_stops_with_a_clear_message(library: Path) -> None:
    rows: list[object] = [{"path": "img/cat0.png"}] + ["broken"] * 5
    manifest = _jsonl(library / "bad.jsonl", rows)
    reader = ManifestReader(manifest, max_errors=3)
    with pytest.raises(ManifestError, match=r"more than 3 rows could not be used.*bad\.jsonl:5"):
        list(reader)


def test_index_field_specs() -> None:
    assert IndexField.parse("year:integer") == IndexField("year", FieldKind.INTEGER)
    assert IndexField.parse("tags").key == "meta.tags"
    with pytest.raises(ValueError, match="unknown type"):
        IndexField.parse("year:date")


@pytest.fixture
def embedder(encoder: Encoder) -> Iterator[Embedder]:
    e = Embedder(encoder, MediaDecoder(workers=1, sample_rate=encoder.decode_sample_rate))
    yield e
    e.close()


def test_manifest_ingest_indexes_fields_and_filters_work(
    library: Path, embedder: Embedder, tmp_path: Path
) -> None:
    manifest = _jsonl(
        library / "library.jsonl",
        [
            {"path": "img/cat0.png", "caption": "a cat", "tags": ["cat", "pet"], "year": 2019},
            {"path": "img/cat1.png", "caption": "a kitten", "tags": ["cat"], "year": 2023},
            {"text": "notes about dogs", "tags": ["dog"], "year": 2023},
            {"path": "img/nope.png"},
        ],
    )
    enc = embedder.encoder
    store = EdgeStore(tmp_path / "data", CollectionSchema(enc.bundle.bundle_id, enc.dim))
    fields = (IndexField.parse("tags"), IndexField.parse("year:integer"))
    request = IngestRequest(
        manifest=manifest, journal=tmp_path / "j.sqlite", quarantine=tmp_path / "q.jsonl", progress=False
    )
    try:
        summary = ingest_library(embedder, store, request, PipelineOptions(index_fields=fields))
        assert (summary.indexed, summary.failed) == (3, 1)
        (line,) = read_report(tmp_path / "q.jsonl")
        assert line["origin"] == "library.jsonl:4" and line["stage"] == "manifest"
        schema = store._shard.info().payload_schema
        assert {"meta.tags", "meta.year"} <= set(schema)
        assert store.count(FilterSpec(must=(Match("meta.tags", "cat"),))) == 2
        assert store.count(FilterSpec(must=(Range("meta.year", gte=2020),))) == 2
        hits = store.query(
            enc.embed_texts(["dogs"])[0], limit=5, filter=FilterSpec(must=(Match("meta.tags", "dog"),))
        )
        assert [h.payload["text"] for h in hits] == ["notes about dogs"]

        # A changed caption re-writes the payload; unchanged rows are skipped.
        manifest.write_text(manifest.read_text().replace('"a kitten"', '"a sleepy kitten"'))
        again = ingest_library(embedder, store, request, PipelineOptions(index_fields=fields))
        assert (again.indexed, again.unchanged) == (1, 2) and store.count() == 3
        assert store.count(FilterSpec(must=(Match("meta.caption", "a sleepy kitten"),))) == 1
    finally:
        store.close()

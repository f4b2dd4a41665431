"""The bulk ingest pipeline end to end on small generated libraries (tiny bundle, CPU)."""

from __future__ import annotations

import io
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders.decode import MediaDecoder
from encoders.embed import Embedder
from encoders.encoder import Encoder
from encoders.media import decode_image
from encoders.modality import Modality
from indexer import ingest_work
from indexer.edge_store import EdgeStore
from indexer.filters import FilterSpec, Match
from indexer.ingest_flow import IngestAborted
from indexer.ingest_local import IngestRequest, ingest_library
from indexer.journal import Journal
from indexer.pipeline import IngestPipeline, PipelineOptions
from indexer.quarantine import Quarantine, read_report
from indexer.schema import CollectionSchema
from indexer.sources import ItemResult, SourceFile
from indexer.store import VectorStore, matching_ids
from indexer.walk import walk_sources
from tests.media import TEXTS, image_bytes, make_image, tone, write_audio, write_library, write_video

MakeStore = Callable[..., VectorStore]


@pytest.fixture
def embedder(encoder: Encoder) -> Iterator[Embedder]:
    e = Embedder(encoder, MediaDecoder(workers=1, sample_rate=encoder.decode_sample_rate))
    yield e
    e.close()


@pytest.fixture
def edge_store(tmp_path: Path) -> Iterator[MakeStore]:
    """The embedded store only, for tests of the pipeline rather than of the two stores."""
    opened: list[VectorStore] = []

    def make(schema: CollectionSchema, path: Path | None = None) -> VectorStore:
        store = EdgeStore(path or tmp_path / "edge", schema)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def _store(encoder: Encoder, store_factory: MakeStore, path: Path | None = None) -> VectorStore:
    return store_factory(CollectionSchema(bundle_id=encoder.bundle.bundle_id, dim=encoder.dim), path)


def _request(tmp_path: Path, root: Path, **kw: object) -> IngestRequest:
    return IngestRequest(
        path=root,
        journal=tmp_path / "journal.sqlite",
        quarantine=tmp_path / "quarantine.jsonl",
        progress=False,
        **kw,  # type: ignore[arg-type]
    )


def _all_points(store: VectorStore) -> list[dict[str, object]]:
    out, offset = [], None
    while True:
        page, offset = store.scroll(limit=256, offset=offset)
        out += [p.payload for p in page]
        if offset is None:
            return out


def test_a_mixed_library_is_indexed_and_a_rerun_reads_nothing(
    embedder: Embedder, store_factory: MakeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = write_library(tmp_path / "lib", n_images=6)
    write_audio(tmp_path / "lib" / "media" / "a.wav", tone(1, 6.0))
    frames = [make_image(k, size=(160, 120)) for k in range(6)]
    write_video(tmp_path / "lib" / "media" / "v.mp4", frames, fps=2, audio=tone(2, 3.0))
    store = _store(embedder.encoder, store_factory)
    request = _request(tmp_path, tmp_path / "lib")
    opts = PipelineOptions(batch_size=8, write_batch=16)

    first = ingest_library(embedder, store, request, opts)
    assert (first.indexed, first.quarantined, first.failed, first.skipped) == (
        6 + len(TEXTS) + 1 + 2,
        2,
        0,
        1,
    )
    assert first.points == store.count() > first.indexed  # long text, audio windows, video segments
    report = {r["path"]: r for r in read_report(tmp_path / "quarantine.jsonl")}
    assert set(report) == {str(paths["corrupt"]), str(paths["truncated"])}
    assert all(r["stage"] == "decode" and "corrupt or truncated" in r["reason"] for r in report.values())
    assert first.quarantine_file == str(tmp_path / "quarantine.jsonl")
    by_modality = Counter(p["modality"] for p in _all_points(store))
    assert set(by_modality) == {"image", "text", "audio", "video"}

    # The re-run skips every indexed file by (path, size, mtime) without opening it.
    reads: list[str] = []
    real = ingest_work.read_source

    def counted(w: ingest_work.Work, limits: ingest_work.ReadLimits) -> None:
        reads.append(w.src.source)
        real(w, limits)

    monkeypatch.setattr("indexer.ingest_steps.read_source", counted)
    again = ingest_library(embedder, store, request, opts)
    assert (again.indexed, again.unchanged, again.quarantined) == (0, first.indexed, 2)
    assert reads == []  # the quarantined files too: remembered until they change
    assert store.count() == first.points
    retried = ingest_library(embedder, store, request, replace(opts, retry_quarantined=True))
    assert retried.quarantined == 2 and sorted(reads) == sorted(report)


def test_stored_vectors_match_the_embedding_path(
    embedder: Embedder, edge_store: MakeStore, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    photo = make_image(7, size=(640, 480))
    photo.save(lib / "exact.png")
    photo.save(lib / "draft.jpg", quality=92)
    store = _store(embedder.encoder, edge_store)
    with IngestPipeline(embedder, store, PipelineOptions(jpeg_draft=True)) as pipeline:
        results: dict[str, ItemResult] = {}
        pipeline.run(walk_sources(lib), on_item=lambda s, r: results.__setitem__(Path(s.source).name, r))
    enc = embedder.encoder
    for name, tolerance in (("exact.png", 1e-5), ("draft.jpg", 2e-2)):
        stored = store.get(list(results[name].ids), with_vectors=True)[0]
        direct = enc.embed_images([decode_image((lib / name).read_bytes())])[0]
        assert stored.vector is not None
        assert np.abs(stored.vector - direct).max() < tolerance, name
        assert (stored.payload["width"], stored.payload["height"]) == (640, 480)


def test_changed_touched_and_deleted_files(
    embedder: Embedder, store_factory: MakeStore, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(4):
        (lib / f"t{i}.txt").write_text(TEXTS[i])
    (lib / "twin.txt").write_text(TEXTS[0])  # the same content as t0: one point, two sources
    store = _store(embedder.encoder, store_factory)
    request = _request(tmp_path, lib, sync=True)
    first = ingest_library(embedder, store, request)
    assert first.indexed == 5 and store.count() == 4

    (lib / "t1.txt").write_text("a completely different text")  # changed
    os.utime(lib / "t2.txt", (time.time() + 5, time.time() + 5))  # touched, same content
    (lib / "t3.txt").unlink()  # deleted
    (lib / "t0.txt").unlink()  # deleted, but its twin still holds the content
    second = ingest_library(embedder, store, request)
    assert (second.indexed, second.unchanged, second.removed) == (1, 2, 2)
    texts = sorted(str(p["text"]) for p in _all_points(store))
    assert texts == sorted([TEXTS[0], "a completely different text", TEXTS[2]])

    third = ingest_library(embedder, store, request)
    assert (third.indexed, third.unchanged, third.removed) == (0, 3, 0)


def test_hostile_files_are_quarantined_and_the_rest_indexed(
    embedder: Embedder, edge_store: MakeStore, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    good = []
    for i in range(5):
        (lib / f"good{i}.png").write_bytes(image_bytes(i))
        good.append(lib / f"good{i}.png")
    jpeg = io.BytesIO()
    make_image(9, size=(320, 240)).save(jpeg, format="JPEG")
    (lib / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (lib / "empty.png").write_bytes(b"")
    rng = np.random.default_rng(0)
    (lib / "noise.mp4").write_bytes(rng.bytes(4096))
    (lib / "noise.wav").write_bytes(rng.bytes(4096))
    (lib / "bomb.png").write_bytes(_png_declaring(20000, 20000))
    store = _store(embedder.encoder, edge_store)
    summary = ingest_library(embedder, store, _request(tmp_path, lib))
    assert summary.indexed == 5 and summary.quarantined == 5 and summary.failed == 0
    assert store.count() == 5
    report = {Path(str(r["path"])).name: r for r in read_report(tmp_path / "quarantine.jsonl")}
    assert set(report) == {"truncated.jpg", "empty.png", "noise.mp4", "noise.wav", "bomb.png"}
    assert report["empty.png"]["stage"] == "read" and "empty" in report["empty.png"]["reason"]
    assert "truncated" in report["truncated.jpg"]["reason"]
    assert "not an accepted video format" in report["noise.mp4"]["reason"], report["noise.mp4"]
    assert "not an accepted audio format" in report["noise.wav"]["reason"], report["noise.wav"]
    assert "too large" in report["bomb.png"]["reason"] and report["bomb.png"]["stage"] == "decode"


def test_a_hang_and_a_crash_in_a_worker_are_quarantined(
    embedder: Embedder, edge_store: MakeStore, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "a.png").write_bytes(image_bytes(1))
    (lib / "hang.png").write_bytes(b"HANG" + image_bytes(2))
    (lib / "crash.png").write_bytes(b"CRASH" + image_bytes(3))
    (lib / "b.png").write_bytes(image_bytes(4))
    store = _store(embedder.encoder, edge_store)
    quarantine = Quarantine(tmp_path / "q.jsonl")
    opts = PipelineOptions(decode_workers=2, decode_timeout=3.0)
    with IngestPipeline(embedder, store, opts, quarantine=quarantine) as pipeline:
        pipeline.decoders.image_target = "tests.hostile_decode:misbehave"
        started = time.monotonic()
        summary = pipeline.run(walk_sources(lib))
    assert time.monotonic() - started < 30
    assert summary.indexed == 2 and summary.quarantined == 2 and store.count() == 2
    report = {Path(str(r["path"])).name: r["reason"] for r in read_report(tmp_path / "q.jsonl")}
    assert "longer than 3 s" in report["hang.png"]
    assert "crashed" in report["crash.png"] and "SIGABRT" in report["crash.png"]


def test_a_failing_store_stops_the_run_cleanly_and_a_rerun_completes(
    embedder: Embedder, edge_store: MakeStore, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(40):
        (lib / f"t{i:02d}.txt").write_text(f"note number {i} about {TEXTS[i % len(TEXTS)]}")
    store = _store(embedder.encoder, edge_store)
    calls = {"n": 0}
    real_upsert = store.upsert

    def filling_up(points: object) -> None:
        calls["n"] += 1
        if calls["n"] >= 3:
            raise OSError(28, "No space left on device")
        real_upsert(points)  # type: ignore[arg-type]

    store.upsert = filling_up  # type: ignore[method-assign]
    opts = PipelineOptions(batch_size=4, write_batch=4, in_flight=8)
    request = _request(tmp_path, lib)
    with pytest.raises(IngestAborted, match="No space left on device"):
        ingest_library(embedder, store, request, opts)
    stored = store.count()
    with Journal(tmp_path / "journal.sqlite") as journal:
        assert 0 < journal.count() <= stored < 40  # nothing journaled that is not stored

    store.upsert = real_upsert  # type: ignore[method-assign]
    summary = ingest_library(embedder, store, request, opts)
    assert summary.indexed + summary.unchanged == 40 and store.count() == 40


def test_check_stops_the_run(embedder: Embedder, edge_store: MakeStore, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(30):
        (lib / f"t{i:02d}.txt").write_text(f"text {i}")
    store = _store(embedder.encoder, edge_store)
    seen: list[str] = []

    def check() -> None:
        if len(seen) >= 5:
            raise TimeoutError("caller gave up")

    opts = PipelineOptions(batch_size=2, in_flight=4)
    with (
        IngestPipeline(embedder, store, opts) as pipeline,
        pytest.raises(TimeoutError, match="caller gave up"),
    ):
        pipeline.run(walk_sources(lib), on_item=lambda s, r: seen.append(s.source), check=check)
    assert 5 <= len(seen) < 30


def test_device_jpeg_decode_path_runs_on_cpu(
    embedder: Embedder, edge_store: MakeStore, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(3):
        make_image(i, size=(320, 240)).save(lib / f"p{i}.jpg", quality=95)
    Image.new("CMYK", (64, 64)).save(lib / "cmyk.jpg")  # not for the device: goes to a worker
    store = _store(embedder.encoder, edge_store)
    results: dict[str, ItemResult] = {}
    with IngestPipeline(embedder, store, PipelineOptions(image_decode="device")) as pipeline:
        assert pipeline.decoders.device_jpeg
        pipeline.run(walk_sources(lib), on_item=lambda s, r: results.__setitem__(Path(s.source).name, r))
    assert all(r.ok for r in results.values()) and store.count() == 4
    stored = store.get(list(results["p0.jpg"].ids), with_vectors=True)[0].vector
    direct = embedder.encoder.embed_images([decode_image((lib / "p0.jpg").read_bytes())])[0]
    assert stored is not None and float(stored @ direct) > 0.99


def test_sources_from_several_namespaces_never_share_points(
    embedder: Embedder, store_factory: MakeStore, tmp_path: Path
) -> None:
    store = _store(embedder.encoder, store_factory)
    src = SourceFile("inline#1", Modality.TEXT, 5, 0.0, text="hello")
    ids = {}
    for ns in ("default", "acme"):
        with IngestPipeline(embedder, store, namespace=ns) as pipeline:
            got: list[ItemResult] = []
            pipeline.run([src], on_item=lambda s, r, got=got: got.append(r))  # type: ignore[misc]
            ids[ns] = got[0].ids
    assert set(ids["default"]).isdisjoint(ids["acme"]) and store.count() == 2
    tenant_points = matching_ids(store, FilterSpec(must=(Match("tenant", "acme"),)))
    assert tenant_points == list(ids["acme"])


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_one_encoder_per_device(embedder: Embedder, tmp_path: Path) -> None:
    # On CUDA these are the GPUs; "cpu:0" is another device name for a copy of the towers here.
    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(12):
        (lib / f"p{i:02d}.png").write_bytes(image_bytes(i))
        (lib / f"t{i:02d}.txt").write_text(f"{TEXTS[i % len(TEXTS)]} {i}")
    enc = embedder.encoder
    store = EdgeStore(tmp_path / "data", CollectionSchema(enc.bundle.bundle_id, enc.dim))
    results: dict[str, ItemResult] = {}
    opts = PipelineOptions(devices=("cpu", "cpu:0"), batch_size=4)
    with IngestPipeline(embedder, store, opts) as pipeline:
        assert len(pipeline.encoders) == 2
        copy = pipeline.encoders[1].embedder.encoder.bundle
        assert copy.model is not enc.bundle.model and str(copy.device) == "cpu:0"
        pipeline.run(walk_sources(lib), on_item=lambda s, r: results.__setitem__(Path(s.source).name, r))
    assert len(results) == 24 and all(r.ok for r in results.values()) and store.count() == 24
    stored = store.get(list(results["p05.png"].ids), with_vectors=True)[0].vector
    direct = enc.embed_images([decode_image((lib / "p05.png").read_bytes())])[0]
    assert stored is not None
    np.testing.assert_allclose(stored, direct, atol=1e-5)
    store.close()


def test_video_frames_fitted_on_decode_threads_embed_as_before(embedder: Embedder, tmp_path: Path) -> None:
    from encoders.embed import VideoEmbedding
    from encoders.inputs import VideoInput

    lib = tmp_path / "lib"
    frames = [make_image(k, size=(320, 180)) for k in range(6)]
    video = write_video(lib / "v.mp4", frames, fps=2, audio=tone(3, 3.0))
    enc = embedder.encoder
    store = EdgeStore(tmp_path / "data", CollectionSchema(enc.bundle.bundle_id, enc.dim))
    results: list[ItemResult] = []
    with IngestPipeline(embedder, store) as pipeline:
        pipeline.run(walk_sources(lib), on_item=lambda s, r: results.append(r))
    (direct,) = embedder.embed([VideoInput(video, "v.mp4")])
    assert isinstance(direct, VideoEmbedding)
    points = store.get(list(results[0].ids), with_vectors=True)
    pooled = next(p for p in points if p.payload.get("pooled") and p.payload.get("track") == "visual")
    assert pooled.vector is not None
    np.testing.assert_allclose(pooled.vector, direct.pooled, atol=1e-5)
    store.close()

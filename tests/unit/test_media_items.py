"""Audio and video through the indexer and the engine, on both store adapters."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from encoders.audio import window_bounds
from encoders.embed import Embedder
from encoders.encoder import Encoder
from encoders.modality import Modality
from indexer.inputs import ItemInput
from indexer.schema import CollectionSchema
from indexer.store import VectorStore
from server.config import ServerConfig
from server.context import background
from server.planner import SearchParams
from server.query_types import QueryInput
from server.services import Services, make_services
from tests.media import extract_audio_track, image_bytes, make_image, tone, write_audio, write_video

MakeStore = Callable[..., VectorStore]

CTX = background()


@pytest.fixture
def engine(encoder: Encoder, store_factory: MakeStore) -> Services:
    store = store_factory(CollectionSchema(bundle_id=encoder.bundle.bundle_id, dim=encoder.dim))
    eng = make_services(Embedder(encoder), store, ServerConfig())
    yield eng  # type: ignore[misc]
    eng.close()


def _video(path: Path, seeds: list[int], pattern: int | None) -> Path:
    """One distinct picture per second (shown for two frames at 2 fps)."""
    frames = [make_image(s) for s in seeds for _ in range(2)]
    audio = tone(pattern, len(seeds)) if pattern is not None else None
    return write_video(path, frames, fps=2, audio=audio)


def test_audio_file_becomes_windows_and_a_pooled_point(engine: Services, tmp_path: Path) -> None:
    path = write_audio(tmp_path / "a.flac", tone(4, 12.0))
    (out,) = engine.writes.upsert(CTX, [ItemInput(Modality.AUDIO, path, source=str(path))])
    assert out.error is None
    cfg = engine.embedder.encoder.require_audio().cfg
    n_windows = len(window_bounds(12 * cfg.sample_rate, cfg))
    points = engine.store.get(out.ids)
    assert len(points) == n_windows + 1
    pooled = [p for p in points if p.payload["pooled"]]
    assert len(pooled) == 1 and pooled[0].payload["t_end"] == pytest.approx(12.0, abs=0.05)
    windows = sorted((p.payload["t_start"], p.payload["t_end"]) for p in points if not p.payload["pooled"])
    assert windows[0][0] == 0 and windows[-1][1] == pytest.approx(12.0, abs=0.05)
    assert all(p.payload["track"] == "audio" and p.payload["modality"] == "audio" for p in points)
    (again,) = engine.writes.upsert(CTX, [ItemInput(Modality.AUDIO, path, source=str(path))])
    assert again.unchanged and sorted(again.ids) == sorted(out.ids)


def test_video_segments_tracks_and_pooled_points(engine: Services, tmp_path: Path) -> None:
    path = _video(tmp_path / "v.mp4", list(range(12)), pattern=1)  # 12 s -> segments 0-5, 5-10, 10-12
    (out,) = engine.writes.upsert(CTX, [ItemInput(Modality.VIDEO, path, source=str(path))])
    assert out.error is None and out.note is None
    points = engine.store.get(out.ids, with_vectors=True)
    visual = sorted(
        (p.payload["t_start"], p.payload["t_end"]) for p in points if p.payload["track"] == "visual"
    )
    audio = sorted(
        (p.payload["t_start"], p.payload["t_end"]) for p in points if p.payload["track"] == "audio"
    )
    assert visual == audio == [(0.0, 5.0), (0.0, 12.0), (5.0, 10.0), (10.0, 12.0)]
    segment = next(p for p in points if p.payload["track"] == "visual" and p.payload["segment"] == 1)
    assert segment.payload["frame_times"] == [5.0, 6.0, 7.0, 8.0, 9.0]


def test_image_query_finds_the_video_segment_holding_that_frame(engine: Services, tmp_path: Path) -> None:
    target_seed = 777
    seeds = list(range(10, 25))  # 15 s: segments 0-5, 5-10, 10-15
    seeds[12] = target_seed  # shown during second 12: inside the third segment
    engine.writes.upsert(
        CTX,
        [
            ItemInput(Modality.VIDEO, _video(tmp_path / "target.mp4", seeds, 1), source="target.mp4"),
            ItemInput(
                Modality.VIDEO, _video(tmp_path / "other.mkv", list(range(40, 55)), 2), source="other.mkv"
            ),
        ],
    )
    hits = engine.queries.search(CTX, QueryInput(image=image_bytes(target_seed)), SearchParams(top_k=2)).hits
    top = hits[0].payload
    assert top["source"] == "target.mp4" and top["track"] == "visual"
    assert (top["t_start"], top["t_end"]) == (10.0, 15.0) and not top["pooled"]
    assert hits[0].score > 0.999


def test_audio_query_equal_to_a_video_track_returns_that_video_on_the_audio_track(
    engine: Services, tmp_path: Path
) -> None:
    videos = [_video(tmp_path / f"v{p}.mp4", list(range(p * 20, p * 20 + 8)), p) for p in range(4)]
    engine.writes.upsert(CTX, [ItemInput(Modality.VIDEO, v, source=v.name) for v in videos])
    engine.writes.upsert(
        CTX, [ItemInput(Modality.AUDIO, write_audio(tmp_path / "x.wav", tone(9, 8)), source="x.wav")]
    )
    query = extract_audio_track(videos[2], tmp_path / "track.wav")
    hits = engine.queries.search(CTX, QueryInput(audio=query.read_bytes()), SearchParams(top_k=3)).hits
    assert hits[0].payload["source"] == "v2.mp4"
    assert hits[0].payload["track"] == "audio" and hits[0].score > 0.99
    assert len({h.payload["media_id"] for h in hits}) == len(hits)  # grouped: one hit per media


def test_corrupt_media_fails_alone_and_silent_video_is_noted(engine: Services, tmp_path: Path) -> None:
    silent = _video(tmp_path / "silent.mp4", [1, 2, 3], pattern=None)
    good = write_audio(tmp_path / "good.mp3", tone(2, 3.0))
    out = engine.writes.upsert(
        CTX,
        [
            ItemInput(Modality.VIDEO, b"\x00\x01 broken", source="broken.mp4"),
            ItemInput(Modality.VIDEO, silent, source="silent.mp4"),
            ItemInput(Modality.AUDIO, good, source="good.mp3"),
            ItemInput(Modality.AUDIO, tmp_path / "missing.wav", source="missing.wav"),
        ],
    )
    assert out[0].error and "broken.mp4" in out[0].error
    assert out[1].error is None and out[1].note == "no audio track"
    assert out[2].error is None
    assert out[3].error and "cannot read file" in out[3].error
    assert engine.store.count() == len(out[1].ids) + len(out[2].ids)


def test_group_size_returns_several_segments_of_one_video(engine: Services, tmp_path: Path) -> None:
    engine.writes.upsert(
        CTX, [ItemInput(Modality.VIDEO, _video(tmp_path / "v.mp4", list(range(15)), 0), source="v.mp4")]
    )
    one = engine.queries.search(CTX, QueryInput(text="anything"), SearchParams(top_k=5)).hits
    many = engine.queries.search(CTX, QueryInput(text="anything"), SearchParams(top_k=5, group_size=4)).hits
    assert len(one) == 1 and len(many) == 4
    assert {h.payload["media_id"] for h in many} == {one[0].payload["media_id"]}

"""Every (query modality -> target modality) pair over text, image, audio and video, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmsearch import client as mc
from mmsearch.client import MMSearchClient
from mmsearch.v1 import search_pb2 as pb
from tests.e2e.conftest import ServerProcess, run_cli
from tests.media import TEXTS, extract_audio_track, image_bytes, make_image, tone, write_audio, write_video

MODALITIES = ["text", "image", "audio", "video"]


@pytest.fixture(scope="module")
def media_library(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    paths: dict[str, Path] = {}
    for i, t in enumerate(TEXTS[:3]):
        paths[f"text{i}"] = root / f"t{i}.md"
        paths[f"text{i}"].write_text(t)
    for i, fmt in enumerate(["PNG", "JPEG", "WEBP"]):
        paths[f"image{i}"] = root / f"i{i}.{fmt.lower()}"
        paths[f"image{i}"].write_bytes(image_bytes(100 + i, fmt))
    for i, ext in enumerate([".wav", ".ogg", ".m4a"]):
        paths[f"audio{i}"] = write_audio(root / f"a{i}{ext}", tone(i, 6.0 + i))
    for i, ext in enumerate([".mp4", ".webm", ".mov"]):
        frames = [make_image(200 + 10 * i + k) for k in range(8) for _ in range(2)]
        paths[f"video{i}"] = write_video(root / f"v{i}{ext}", frames, fps=2, audio=tone(5 + i, 8.0))
    (root / "broken.mkv").write_bytes(b"\x1a\x45\xdf\xa3 broken matroska")
    (root / "empty.flac").write_bytes(b"")
    proc = run_cli("ingest", str(root), "--server", server.target, "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["indexed"] == 12 and summary["quarantined"] == 2 and summary["failed"] == 0, summary
    errors = {Path(e["path"]).name: e for e in summary["errors"]}
    assert errors["broken.mkv"]["stage"] == "decode" and errors["broken.mkv"]["reason"]
    assert errors["empty.flac"]["stage"] == "read" and "empty" in errors["empty.flac"]["reason"]
    return paths


def _only_library(library: dict[str, Path]) -> pb.Filter:
    """The library's files alone: whatever else the module's server holds cannot change a count."""
    sources = pb.KeywordList(values=sorted(str(p) for p in library.values()))
    return pb.Filter(must=[pb.Condition(key="source", any_of=sources)])


def _query(kind: str, library: dict[str, Path]) -> dict[str, object]:
    if kind == "text":
        return {"text": TEXTS[1]}
    return {kind: library[f"{kind}1"].read_bytes()}


@pytest.mark.parametrize("target", MODALITIES)
@pytest.mark.parametrize("query", MODALITIES)
def test_any_to_any(client: MMSearchClient, media_library: dict[str, Path], query: str, target: str) -> None:
    resp = client.search(
        top_k=3,
        modalities=[target],
        filter=_only_library(media_library),
        **_query(query, media_library),  # type: ignore[arg-type]
    )
    assert mc.modality_name(resp.query_modality) == query
    assert len(resp.hits) == 3  # three media of each modality are indexed
    assert {mc.modality_name(h.modality) for h in resp.hits} == {target}
    assert len({h.media_id for h in resp.hits}) == 3  # grouped by media
    if query == target:  # the same content is indexed: it comes first
        assert resp.hits[0].source == str(media_library[f"{target}1"])
        assert resp.hits[0].score > 0.99
    if target in ("audio", "video"):
        assert all(h.HasField("t_start") and h.t_end > h.t_start for h in resp.hits)


def test_audio_track_query_over_cli(
    server: ServerProcess, media_library: dict[str, Path], tmp_path: Path
) -> None:
    track = extract_audio_track(media_library["video2"], tmp_path / "track.wav")
    proc = run_cli("search", "--server", server.target, "--audio", str(track), "--top-k", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    top = json.loads(proc.stdout)["results"][0]
    assert top["source"] == str(media_library["video2"]) and top["track"] == "audio"
    assert top["modality"] == "video" and top["t_end"] > top["t_start"]


def test_video_query_with_groups(client: MMSearchClient, media_library: dict[str, Path]) -> None:
    resp = client.search(
        video=media_library["video0"].read_bytes(),
        top_k=1,
        modalities=["video"],
        group_size=4,
        filter=_only_library(media_library),
    )
    assert len(resp.hits) == 4 and {h.source for h in resp.hits} == {str(media_library["video0"])}
    assert {mc.pb.Track.Name(h.track) for h in resp.hits} <= {"TRACK_VISUAL", "TRACK_AUDIO"}


def test_corrupt_media_query_is_invalid_argument(client: MMSearchClient) -> None:
    import grpc

    for kind in ("audio", "video"):
        with pytest.raises(grpc.RpcError) as exc:
            client.search(top_k=1, **{kind: b"\x00\x00 not media"})  # type: ignore[arg-type]
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert f"query.{kind}" in exc.value.details()  # type: ignore[attr-defined]
    assert client.health() == "SERVING"

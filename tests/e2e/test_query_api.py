"""Multi-stage search, multi-input queries, Recommend and MineHardNegatives over a real socket.

The module shares one server. Each test reads only the points of its own tagged set (metadata
`set`, written by the test or its fixture) and filters on it, so what one test writes cannot change
what another expects, in any order."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from encoders.bundle import ModelBundle
from indexer.schema import CollectionSchema, PointPayload, PointRecord, point_id
from mmsearch import client as mc
from mmsearch.client import MMSearchClient
from mmsearch.v1 import search_pb2 as pb
from tests.e2e.conftest import ServerProcess, run_cli, start_server, write_quantized_store
from tests.media import TEXTS, image_bytes, make_image, tone, write_video

# The band: a query point and BAND points whose cosines to it rise evenly from 0.50 to 0.52, so
# the exact order is known and int8 rounding (some 0.003 on a cosine) reshuffles it.
BAND = 1000
BAND_TOP10 = {f"band-{i}" for i in range(BAND - 10, BAND)}
STAGE_KEYS = {"encode", "search", "group"}


def only(tag: str) -> pb.Filter:
    return pb.Filter(must=[pb.Condition(key="set", keyword=tag)])


def _band_points(bundle: ModelBundle) -> list[PointRecord]:
    rng = np.random.default_rng(11)
    q = rng.normal(size=bundle.embed_dim)
    q /= np.linalg.norm(q)
    vectors = {"band-query": q}
    for i in range(BAND):
        u = rng.normal(size=q.shape)
        u -= (u @ q) * q
        c = 0.5 + 0.02 * i / BAND
        vectors[f"band-{i}"] = c * q + math.sqrt(1 - c * c) * u / np.linalg.norm(u)

    def record(name: str, v: np.ndarray) -> PointRecord:
        pid = point_id(f"id:{name}")
        payload = PointPayload(
            modality="image",
            source=f"band/{name}",
            content_hash=name,
            media_id=pid,
            bundle_id=bundle.bundle_id,
            meta={"set": "band"},
            external_id=name,
        )
        return PointRecord(pid, v.astype(np.float32), payload.to_dict())

    return [record(name, v) for name, v in vectors.items()]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: ModelBundle) -> Iterator[ServerProcess]:
    """This module's server opens a store that already holds the band, with int8 codes built for
    every segment (as a large index has), so the stage options change what a test can see."""
    data = tmp_path_factory.mktemp("data")
    schema = CollectionSchema(bundle_id=tiny_bundle.bundle_id, dim=tiny_bundle.embed_dim)
    write_quantized_store(data, schema, _band_points(tiny_bundle))
    srv = start_server(data)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def ids(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("q")
    with MMSearchClient(server.target) as c:
        items = [
            mc.image_item(image_bytes(300 + i), id=f"img-{i}", metadata={"label": f"l{i % 3}", "set": "base"})
            for i in range(12)
        ]
        items += [
            mc.text_item(f"caption number {i}", id=f"txt-{i}", metadata={"label": f"l{i % 3}", "set": "base"})
            for i in range(6)
        ]
        video = write_video(
            root / "long.mp4",
            [make_image(400 + k) for k in range(30) for _ in range(2)],
            fps=2,
            audio=tone(3, 30),
        )
        items.append(mc.media_item(video, "video", id="long-video", metadata={"set": "base"}))
        resp = c.upsert(items)
        assert resp.failed == 0
    return {f"img-{i}": f"img-{i}" for i in range(12)}


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 80), colour).save(buf, format="PNG")
    return buf.getvalue()


def _vectors(client: MMSearchClient, ids: list[str]) -> dict[str, np.ndarray]:
    return {p.point.id: np.asarray(p.vector) for p in client.get(ids, with_vectors=True).points}


def _cosines(client: MMSearchClient, query: np.ndarray, hits: list[pb.SearchHit]) -> list[float]:
    """Each hit's cosine to `query`, recomputed here from the stored vectors."""
    vectors = _vectors(client, [h.id for h in hits])
    return [float(vectors[h.id] @ query) for h in hits]


def _name(hit: pb.SearchHit) -> str:
    return str(hit.attributes["external_id"])


def test_every_stage_option_runs(client: MMSearchClient, ids: dict[str, str]) -> None:
    base = client.search(id="img-0", top_k=5, group_size=3, filter=only("base"))
    assert set(base.stage_ms) == STAGE_KEYS and base.stage_ms["search"] > 0
    for stages in (
        pb.SearchStages(oversampling=1, exact_rescore=False, frames_rescore=False),
        pb.SearchStages(oversampling=8, quantized=True, exact_rescore=True),
        pb.SearchStages(mmr_lambda=0.5),
    ):
        resp = client.search(id="img-0", top_k=5, group_size=3, stages=stages, filter=only("base"))
        assert len(resp.hits) >= 5 and set(resp.stage_ms) == STAGE_KEYS
        assert all(0.0 <= h.calibrated_score <= 1.0 for h in resp.hits)


def test_quantized_first_pass_scores_by_the_int8_codes_unless_rescored(client: MMSearchClient) -> None:
    query = next(iter(_vectors(client, ["band-query"]).values()))

    def worst_error(stages: pb.SearchStages) -> float:
        hits = list(client.search(id="band-query", top_k=10, filter=only("band"), stages=stages).hits)
        assert len(hits) == 10
        return max(abs(h.score - c) for h, c in zip(hits, _cosines(client, query, hits), strict=True))

    # Scores straight from the int8 codes are off by the rounding ...
    assert worst_error(pb.SearchStages(quantized=True, exact_rescore=False, oversampling=1)) > 3e-4
    # ... re-scored (the default), or without quantization, they are the exact cosines.
    assert worst_error(pb.SearchStages(quantized=True, exact_rescore=True)) < 1e-5
    assert worst_error(pb.SearchStages(quantized=True)) < 1e-5
    assert worst_error(pb.SearchStages(quantized=False, exact_rescore=False, oversampling=1)) < 1e-5


def test_an_unquantized_search_never_scores_by_the_int8_codes(client: MMSearchClient) -> None:
    query = next(iter(_vectors(client, ["band-query"]).values()))
    stages = pb.SearchStages(quantized=False, exact_rescore=False, oversampling=4)
    hits = list(client.search(id="band-query", top_k=10, filter=only("band"), stages=stages).hits)
    assert np.allclose([h.score for h in hits], _cosines(client, query, hits), atol=1e-5)


def test_oversampling_lets_the_rescore_recover_what_the_quantized_pass_missed(client: MMSearchClient) -> None:
    def top10(stages: pb.SearchStages) -> set[str]:
        hits = client.search(id="band-query", top_k=10, filter=only("band"), stages=stages).hits
        return {_name(h) for h in hits}

    assert top10(pb.SearchStages(quantized=False)) == BAND_TOP10  # the exact order, as built
    # The rescore only reorders what the int8 pass fetched: 40 candidates (top_k * 3 + 10) at
    # oversampling 1 miss part of the true top 10; 100 times that covers the whole band.
    narrow = top10(pb.SearchStages(quantized=True, exact_rescore=True, oversampling=1))
    wide = top10(pb.SearchStages(quantized=True, exact_rescore=True, oversampling=100))
    assert len(narrow & BAND_TOP10) < 10
    assert wide == BAND_TOP10


def test_frames_rescore_finds_the_segment_holding_the_frame(client: MMSearchClient, tmp_path: Path) -> None:
    red, white, reddish = (255, 0, 0), (255, 255, 255), (230, 60, 60)
    # 15 s of white with one red second (12 s): the 10-15 s segment's mean vector is mostly white.
    frames = [Image.new("RGB", (96, 80), red if s == 12 else white) for s in range(15) for _ in range(2)]
    video = write_video(tmp_path / "flash.mp4", frames, fps=2)
    resp = client.upsert(
        [
            mc.media_item(video, "video", id="frames-video", metadata={"set": "frames"}),
            mc.image_item(_png(reddish), id="frames-reddish", metadata={"set": "frames"}),
        ]
    )
    assert resp.failed == 0
    query = np.asarray(client.embed([mc.query_input(image=_png(red))]).embeddings[0].vector)

    def search(frames_rescore: bool) -> list[pb.SearchHit]:
        stages = pb.SearchStages(frames_rescore=frames_rescore)
        return list(client.search(image=_png(red), top_k=2, filter=only("frames"), stages=stages).hits)

    rescored = search(True)
    top = rescored[0]
    assert _name(top) == "frames-video" and mc.pb.Track.Name(top.track) == "TRACK_VISUAL"
    assert (top.t_start, top.t_end) == (10.0, 15.0) and not top.pooled
    # Its score is the red frame's, far above the cosine of the segment's mean vector.
    assert top.score > 0.9999 and top.score > _cosines(client, query, [top])[0] + 1e-3
    plain = search(False)
    # Without frames every score is the dense cosine, and the reddish image comes first.
    assert _name(plain[0]) == "frames-reddish"
    assert np.allclose([h.score for h in plain], _cosines(client, query, plain), atol=1e-5)


def test_mmr_trades_near_duplicates_for_other_items(client: MMSearchClient) -> None:
    duplicate = "a red fox asleep in the snow"
    items = [mc.text_item(duplicate, id=f"mmr-dup-{i}", metadata={"set": "mmr"}) for i in range(6)]
    items += [mc.text_item(t, id=f"mmr-other-{i}", metadata={"set": "mmr"}) for i, t in enumerate(TEXTS)]
    assert client.upsert(items).failed == 0

    def page(mmr_lambda: float | None = None) -> list[pb.SearchHit]:
        stages = pb.SearchStages(mmr_lambda=mmr_lambda)  # unset when None: MMR off
        resp = client.search(text=duplicate, top_k=5, filter=only("mmr"), stages=stages)
        assert len(resp.hits) == 5
        return list(resp.hits)

    def duplicates(hits: list[pb.SearchHit]) -> int:
        return sum(_name(h).startswith("mmr-dup-") for h in hits)

    def contents(hits: list[pb.SearchHit]) -> int:
        return len({h.attributes["content_hash"] for h in hits})

    plain, diverse = page(), page(mmr_lambda=0.2)
    assert duplicates(plain) == 5 and contents(plain) == 1  # six copies score 1.0: they fill the page
    assert _name(diverse[0]).startswith("mmr-dup-")  # MMR still picks the most relevant first
    # Then a copy's MMR score is 0.2 * 1 - 0.8 * 1 (it equals the pick), below any other text's.
    assert duplicates(diverse) == 1 and contents(diverse) == 5
    assert [h.id for h in diverse] != [h.id for h in plain]
    assert duplicates(page(mmr_lambda=1.0)) == 5  # lambda 1 is relevance alone


def test_weighted_positives_negatives_and_rrf(client: MMSearchClient, ids: dict[str, str]) -> None:
    img, txt = mc.query_input(image=image_bytes(301)), mc.query_input(text="caption number 4")
    base = only("base")
    mostly_text = client.search(
        top_k=3, positives=[(img, 0.05), (txt, 3.0)], modalities=["text"], filter=base
    )
    assert mostly_text.hits[0].text == "caption number 4"
    # Reciprocal rank fusion of the two lists: the exact image and the exact caption both make the page.
    rrf = client.search(top_k=10, positives=[(img, 1.0), (txt, 1.0)], fusion="rrf", filter=base)
    page = {h.attributes["external_id"] for h in rrf.hits}
    assert {"img-1", "txt-4"} <= page
    pushed = client.search(
        top_k=5, positives=[(img, 1.0)], negatives=[(mc.query_input(id="img-1"), 1.0)], filter=base
    )
    assert "img-1" not in {h.attributes["external_id"] for h in pushed.hits if "external_id" in h.attributes}


def test_recommend_and_mining(client: MMSearchClient, ids: dict[str, str]) -> None:
    base = only("base")
    rec = client.recommend(["img-3", "img-6"], ["img-1"], top_k=4, modalities=["image"], filter=base)
    got = {h.attributes["external_id"] for h in rec.hits}
    assert len(got) == 4 and not got & {"img-3", "img-6", "img-1"}
    mined = client.mine(positive_ids=["txt-0"], k=3, group_key="label", modalities=["text"], filter=base)
    assert len(mined.negatives) == 3 and mined.HasField("positive_score")
    assert all(h.metadata["label"] != "l0" for h in mined.negatives)  # txt-3 shares txt-0's label
    assert all(h.score <= 0.95 * mined.positive_score + 1e-6 for h in mined.negatives)


def test_mine_cli(server: ServerProcess, ids: dict[str, str]) -> None:
    proc = run_cli(
        "mine", "--server", server.target, "--positive", "txt-2", "--k", "3", "--group-key", "label",
        "--modality", "text", "--filter", "set=base", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["negatives"]) == 3 and "positive_score" in out, proc.stdout
    assert all(n["metadata"]["label"] != "l2" for n in out["negatives"])


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (pb.SearchRequest(top_k=3, positives=[pb.WeightedInput(input=pb.QueryInput(text="a"), weight=-1)]),
         grpc.StatusCode.INVALID_ARGUMENT, "positives[0].weight"),
        (pb.SearchRequest(top_k=3, positives=[pb.WeightedInput(input=pb.QueryInput(text="a"), weight=float("nan"))]),
         grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        (pb.SearchRequest(top_k=3, negatives=[pb.WeightedInput(input=pb.QueryInput(text="a"))]),
         grpc.StatusCode.INVALID_ARGUMENT, "negative-only"),
        (pb.SearchRequest(top_k=3, positives=[pb.WeightedInput(input=pb.QueryInput(id="nope"))]),
         grpc.StatusCode.NOT_FOUND, "positives[0].input.id"),
        (pb.SearchRequest(top_k=3, query=pb.QueryInput(text="a"), stages=pb.SearchStages(mmr_lambda=2)),
         grpc.StatusCode.INVALID_ARGUMENT, "mmr_lambda"),
        (pb.SearchRequest(top_k=3, query=pb.QueryInput(text="a"), positives=[pb.WeightedInput(input=pb.QueryInput(text="b"))]),
         grpc.StatusCode.INVALID_ARGUMENT, "not both"),
    ],
)  # fmt: skip
def test_bad_multi_input_requests(
    server: ServerProcess, request_: pb.SearchRequest, code: grpc.StatusCode, needle: str
) -> None:
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as exc:
        mc.pb_grpc.SearchServiceStub(channel).Search(request_, timeout=60)
    assert exc.value.code() == code  # type: ignore[attr-defined]
    assert needle in exc.value.details()  # type: ignore[attr-defined]


def test_bad_recommend_and_mine_requests(client: MMSearchClient, ids: dict[str, str]) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        client.recommend(["unknown-id"], top_k=3)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as exc:
        client.recommend([], ["img-1"], top_k=3)
    assert "positive_ids is empty" in exc.value.details()  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as exc:
        client.mine(k=3)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as exc:
        client.mine(positive_ids=["img-0"], k=3, max_fraction_of_positive=1.5)
    assert "max_fraction_of_positive" in exc.value.details()  # type: ignore[attr-defined]

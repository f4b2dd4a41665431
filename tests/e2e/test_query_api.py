"""Multi-stage search, multi-input queries, Recommend and MineHardNegatives over a real socket."""

from __future__ import annotations

import json

import grpc
import pytest

from mmsearch import client as mc
from mmsearch.client import MMSearchClient
from mmsearch.v1 import search_pb2 as pb
from tests.e2e.conftest import ServerProcess, run_cli
from tests.media import image_bytes, make_image, tone, write_video


@pytest.fixture(scope="module")
def ids(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("q")
    with MMSearchClient(server.target) as c:
        items = [
            mc.image_item(image_bytes(300 + i), id=f"img-{i}", metadata={"label": f"l{i % 3}"})
            for i in range(12)
        ]
        items += [
            mc.text_item(f"caption number {i}", id=f"txt-{i}", metadata={"label": f"l{i % 3}"})
            for i in range(6)
        ]
        video = write_video(
            root / "long.mp4",
            [make_image(400 + k) for k in range(30) for _ in range(2)],
            fps=2,
            audio=tone(3, 30),
        )
        items.append(mc.media_item(video, "video", id="long-video"))
        resp = c.upsert(items)
        assert resp.failed == 0
    return {f"img-{i}": f"img-{i}" for i in range(12)}


def test_every_stage_option_runs(client: MMSearchClient, ids: dict[str, str]) -> None:
    base = client.search(id="img-0", top_k=5, group_size=3)
    assert base.stage_ms["encode"] >= 0 and base.stage_ms["search"] > 0
    for stages in (
        pb.SearchStages(oversampling=1, exact_rescore=False, frames_rescore=False),
        pb.SearchStages(oversampling=8, quantized=True, exact_rescore=True),
        pb.SearchStages(mmr_lambda=0.5),
    ):
        resp = client.search(id="img-0", top_k=5, group_size=3, stages=stages)
        assert len(resp.hits) >= 5
        assert all(0.0 <= h.calibrated_score <= 1.0 for h in resp.hits)


def test_mmr_spreads_the_page_over_more_media(client: MMSearchClient, ids: dict[str, str]) -> None:
    plain = client.search(text="x", top_k=10, group_size=20, modalities=["video", "image"])
    diverse = client.search(
        text="x",
        top_k=10,
        group_size=20,
        modalities=["video", "image"],
        stages=pb.SearchStages(mmr_lambda=0.2),
    )

    def from_video(resp: pb.SearchResponse) -> int:
        return sum(h.modality == pb.MODALITY_VIDEO for h in resp.hits[:10])

    assert from_video(diverse) <= from_video(plain)
    assert len({h.media_id for h in diverse.hits[:10]}) >= len({h.media_id for h in plain.hits[:10]})


def test_weighted_positives_negatives_and_rrf(client: MMSearchClient, ids: dict[str, str]) -> None:
    img, txt = mc.query_input(image=image_bytes(301)), mc.query_input(text="caption number 4")
    mostly_text = client.search(top_k=3, positives=[(img, 0.05), (txt, 3.0)], modalities=["text"])
    assert mostly_text.hits[0].text == "caption number 4"
    # Reciprocal rank fusion of the two lists: the exact image and the exact caption both make the page.
    rrf = client.search(top_k=10, positives=[(img, 1.0), (txt, 1.0)], fusion="rrf")
    page = {h.attributes["external_id"] for h in rrf.hits}
    assert {"img-1", "txt-4"} <= page
    pushed = client.search(top_k=5, positives=[(img, 1.0)], negatives=[(mc.query_input(id="img-1"), 1.0)])
    assert "img-1" not in {h.attributes["external_id"] for h in pushed.hits if "external_id" in h.attributes}


def test_recommend_and_mining(client: MMSearchClient, ids: dict[str, str]) -> None:
    rec = client.recommend(["img-3", "img-6"], ["img-1"], top_k=4, modalities=["image"])
    got = {h.attributes["external_id"] for h in rec.hits}
    assert len(got) == 4 and not got & {"img-3", "img-6", "img-1"}
    mined = client.mine(positive_ids=["txt-0"], k=3, group_key="label", modalities=["text"])
    assert len(mined.negatives) == 3 and mined.HasField("positive_score")
    assert all(h.metadata["label"] != "l0" for h in mined.negatives)  # txt-3 shares txt-0's label
    assert all(h.score <= 0.95 * mined.positive_score + 1e-6 for h in mined.negatives)


def test_mine_cli(server: ServerProcess, ids: dict[str, str]) -> None:
    proc = run_cli(
        "mine", "--server", server.target, "--positive", "txt-2", "--k", "3", "--group-key", "label",
        "--modality", "text", "--json",
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

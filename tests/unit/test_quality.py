"""bench/quality.py's measures on controlled data: calibration shares, nDCG, spreads, relevance
of long-video segments, and the recall-quantile calibration fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.quality_measures import calibration_shares, mean_std, ndcg
from bench.quality_world import World
from encoders.calibration import fit_relevant_quantiles
from encoders.modality import Modality
from trainer.evaluate import EvalItems, confusable_recall
from trainer.hard_library import LongVideo, Shot


def _items(modality: Modality, groups: list[str], vectors: np.ndarray) -> EvalItems:
    return EvalItems(modality, [f"{modality}:{i}" for i in range(len(groups))], np.array(groups), vectors)


def _space(
    rng: np.random.Generator, n_groups: int, per_group: int, noise: float, offset: float
) -> tuple[list[str], np.ndarray]:
    """Unit vectors around one direction per group, plus a shared offset that lifts every cosine."""
    centres = np.eye(16)[:n_groups]
    groups, rows = [], []
    for g in range(n_groups):
        for _ in range(per_group):
            v = centres[g] + noise * rng.normal(size=16) + offset * np.eye(16)[15]
            groups.append(str(g))
            rows.append(v / np.linalg.norm(v))
    return groups, np.array(rows)


def test_one_calibrated_threshold_keeps_the_same_share_where_raw_cosines_do_not() -> None:
    rng = np.random.default_rng(0)
    # text->image: tight, low cosines; audio->text: loose, high cosines (a shared offset).
    tg, tv = _space(rng, 8, 12, 0.15, 0.0)
    ig, iv = _space(rng, 8, 12, 0.15, 0.0)
    ag, av = _space(rng, 8, 12, 0.6, 2.0)
    items = {
        Modality.TEXT: _items(Modality.TEXT, tg, tv),
        Modality.IMAGE: _items(Modality.IMAGE, ig, iv),
        Modality.AUDIO: _items(Modality.AUDIO, ag, av),
    }
    pairs = [(Modality.TEXT, Modality.IMAGE), (Modality.AUDIO, Modality.IMAGE)]
    out = calibration_shares(items, pairs)
    assert set(out["calibrated_shares"]) == {"text->image", "audio->image"}
    assert out["raw_spread"] >= 0.3
    assert out["calibrated_spread"] <= 0.1
    assert all(0.3 < v < 0.7 for v in out["calibrated_shares"].values())


def test_relevant_quantile_fit_reads_as_a_share_of_relevant_scores() -> None:
    rng = np.random.default_rng(1)
    scores = np.r_[rng.normal(0.6, 0.05, 2000), rng.normal(0.2, 0.05, 20000)]
    relevant = np.r_[np.ones(2000), np.zeros(20000)].astype(bool)
    cal = fit_relevant_quantiles(scores, relevant)
    calibrated = np.array([cal(float(s)) for s in scores[relevant]])
    for t in (0.25, 0.5, 0.75):
        assert (calibrated >= t).mean() == pytest.approx(1 - t, abs=0.03)
    with pytest.raises(ValueError, match="two relevant"):
        fit_relevant_quantiles(scores[:3], np.array([True, False, False]))


def test_ndcg_and_spread_helpers() -> None:
    assert ndcg([1, 1, 0], 2) == pytest.approx(1.0)
    assert ndcg([0, 1, 1], 2) < 1.0
    assert ndcg([0, 0, 0], 0) == 0.0
    assert ndcg([1, 0, 0], 1) == pytest.approx(1.0)  # one relevant item, ranked first: ideal
    s = mean_std([0.1, 0.3])
    assert s["mean"] == pytest.approx(0.2) and s["std"] == pytest.approx(0.1414, abs=1e-4)
    assert mean_std([0.5])["std"] == 0.0


def test_confusable_recall_restricts_queries_and_candidates_to_each_set() -> None:
    q = _items(Modality.TEXT, ["x-a", "x-b", "y-a"], np.array([[1.0, 0], [0.9, 0.1], [0, 1.0]]))
    t = _items(Modality.IMAGE, ["x-a", "x-b", "y-a"], np.array([[0.9, 0.1], [1.0, 0], [0, 1.0]]))
    sets = [("second", ("x-a", "x-b")), ("first", ("x-a", "y-a"))]
    out = confusable_recall(q, t, sets)
    # Within {x-a, x-b} both queries pick the same image: one right, one wrong.
    assert out["second"] == 0.5 and out["first"] == 1.0 and out["all"] == pytest.approx(0.75)


def test_long_video_segments_are_relevant_where_their_range_meets_a_shot() -> None:
    video = LongVideo(
        "long/test/long_000.mp4",
        60.0,
        Shot("7-red-tl-small", 12, 17),
        "a small red seven in the top left",
        (Shot("1-red-tl-small", 0, 12), Shot("7-red-tl-small", 12, 17), Shot("2-blue-br-large", 17, 60)),
    )
    world = World("hard", Path("/nowhere"), {"long_000.mp4": video})

    def seg(t0: float, t1: float, pooled: bool = False) -> dict[str, object]:
        return {"source": "/x/long/test/long_000.mp4", "t_start": t0, "t_end": t1, "pooled": pooled}

    assert world.relevant(seg(10, 15), "7-red-tl-small")
    assert world.relevant(seg(15, 20), "7-red-tl-small")
    assert not world.relevant(seg(20, 25), "7-red-tl-small")
    assert world.relevant(seg(0, 60, pooled=True), "2-blue-br-large")
    assert world.relevant({"source": "/x/images/test/7-red-tl-small__000.png"}, "7-red-tl-small")
    assert not world.relevant({"source": "/x/images/test/7-red-tl-large__000.png"}, "7-red-tl-small")

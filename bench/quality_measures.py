"""Measures for bench/quality.py: re-ranking stages, long-video segments and MMR through the real
query path (the embedded store, the planner), and score calibration on embedded test items.

Relevance is class-level (a hit is relevant when it shows the query's class); a segment of a
long video is relevant when its time range overlaps a shot of the class (hard world's truth file).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from encoders.bundle import load_bundle
from encoders.calibration import Calibration, Platt, fit_platt, fit_relevant_quantiles
from encoders.embed import Embedder
from encoders.encoder import Encoder
from encoders.modality import Modality
from indexer.edge_store import EdgeStore
from indexer.filters import FilterSpec
from indexer.ingest_local import IngestRequest, ingest_library
from indexer.schema import CollectionSchema, Key
from indexer.store import Stages
from server.config import ServerConfig
from server.context import background
from server.planner import DEFAULT_STAGES, MAX_GROUP_SIZE, SearchParams
from server.query_types import QueryInput
from server.services import Services, make_services
from trainer.evaluate import EvalItems

CTX = background()
TOP = 10
Relevant = Callable[[dict[str, Any], str], bool]  # (hit payload, query group) -> relevant?


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (0 for one value) of per-seed figures."""
    v = np.asarray(values, dtype=np.float64)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {
        "mean": round(float(v.mean()), 4),
        "std": round(std, 4),
        "values": [round(float(x), 4) for x in v],
    }


@contextmanager
def served(bundle_dir: Path, folders: Sequence[Path], workdir: Path) -> Iterator[Services]:
    """The query services over an embedded store holding every file under `folders`."""
    encoder = Encoder(load_bundle(str(bundle_dir)))
    store = EdgeStore(workdir, CollectionSchema(encoder.bundle.bundle_id, encoder.dim))
    engine = make_services(Embedder(encoder), store, ServerConfig())
    try:
        for folder in folders:
            ingest_library(engine.embedder, store, IngestRequest(path=folder, progress=False))
        store.optimize()
        yield engine
    finally:
        engine.close()


def ndcg(relevance: Sequence[int], n_relevant: int) -> float:
    """nDCG@len(relevance) against the ideal list of min(n_relevant, length) relevant hits."""
    ideal = sum(1 / math.log2(i + 2) for i in range(min(n_relevant, len(relevance))))
    gain = sum(r / math.log2(i + 2) for i, r in enumerate(relevance))
    return gain / ideal if ideal else 0.0


# -- the stages (today's table, digits world) -----------------------------------------------

STAGES = {
    "ann": (Stages(oversampling=1, quantized=True, exact_rescore=False), False),
    "+rescore": (Stages(oversampling=4, quantized=True, exact_rescore=True), False),
    "+maxsim": (Stages(oversampling=4, quantized=True, exact_rescore=True), True),
    "+mmr": (Stages(oversampling=4, quantized=True, exact_rescore=True, mmr_lambda=0.7), True),
}


def stage_quality(
    engine: Services, queries: Sequence[tuple[QueryInput, str]], relevant: Relevant
) -> dict[str, Any]:
    """Each stage configuration in turn, one hit per media: Recall@10, nDCG@10, median ms."""
    out: dict[str, Any] = {}
    for name, (stages, frames) in STAGES.items():
        recall, gains, ms = [], [], []
        for query, group in queries:
            params = SearchParams(top_k=TOP, stages=stages, frames_rescore=frames)
            t0 = time.perf_counter()
            hits = engine.queries.search(CTX, query, params).hits
            ms.append((time.perf_counter() - t0) * 1e3)
            rel = [int(relevant(h.payload, group)) for h in hits]
            recall.append(float(any(rel)))
            gains.append(ndcg(rel, TOP))
        out[name] = {
            "R@10": round(float(np.mean(recall)), 4),
            "nDCG@10": round(float(np.mean(gains)), 4),
            "ms": round(float(np.median(ms)), 2),
        }
    return out


# -- long videos: which segment, which time ---------------------------------------------------


@dataclass(frozen=True)
class SegmentQuery:
    query: QueryInput
    kind: str  # "text" or "image"
    group: str
    video: str | None = None  # file name of the video holding the answer; None: any of the class
    t_start: float = 0.0
    t_end: float = 0.0


def segment_quality(
    engine: Services,
    queries: Sequence[SegmentQuery],
    relevant: Relevant,
    *,
    frames: bool,
    long_only: FilterSpec | None,
) -> dict[str, Any]:
    """The top video segment, with pooled (mean-of-frames) vectors only or with MAX_SIM frame
    re-scoring. Segment R@1: right video and a time range overlapping the answer's (or, with no
    one answer, a segment of the query's class); the share of right videos; the error of the
    returned range's midpoint where the video is right."""
    params = SearchParams(
        top_k=1, modalities=(Modality.VIDEO,), filter=long_only, stages=DEFAULT_STAGES, frames_rescore=frames
    )
    right: list[bool] = []
    video: list[bool] = []
    errors: list[float] = []
    by_kind: dict[str, list[bool]] = {}
    for q in queries:
        hits = engine.queries.search(CTX, q.query, params).hits
        hit = hits[0].payload if hits else {}
        t0, t1 = float(hit.get(Key.T_START, 0.0)), float(hit.get(Key.T_END, 0.0))
        if q.video is None:
            same = bool(hit) and relevant(hit, q.group)
            ok = same and not hit.get(Key.POOLED)
        else:
            same = Path(str(hit.get(Key.SOURCE, ""))).name == q.video
            ok = same and not hit.get(Key.POOLED) and t0 < q.t_end and t1 > q.t_start
            if same:
                errors.append(abs((t0 + t1) / 2 - (q.t_start + q.t_end) / 2))
        right.append(ok)
        video.append(same)
        by_kind.setdefault(q.kind, []).append(ok)
    return {
        "segment_R@1": round(float(np.mean(right)), 4),
        "by_query": {k: round(float(np.mean(v)), 4) for k, v in by_kind.items()},
        "right_video": round(float(np.mean(video)), 4),
        "time_error_s": round(float(np.mean(errors)), 2) if errors else None,
    }


# -- MMR: how many media in the first ten hits, and what it costs ------------------------------


def mmr_quality(
    engine: Services,
    queries: Sequence[tuple[QueryInput, str]],
    relevant: Relevant,
    n_relevant: Callable[[str], int],
    *,
    mmr_lambda: float,
) -> dict[str, Any]:
    """The first ten hits with no per-media cap, without and with MMR: distinct media among
    them and nDCG@10 (every relevant hit counts, the same media's twins included)."""
    out: dict[str, Any] = {}
    for name, lam in (("off", None), ("on", mmr_lambda)):
        params = SearchParams(
            top_k=TOP, group_size=MAX_GROUP_SIZE, stages=replace(DEFAULT_STAGES, mmr_lambda=lam)
        )
        distinct, gains = [], []
        for query, group in queries:
            hits = engine.queries.search(CTX, query, params).hits[:TOP]
            distinct.append(len({h.payload.get(Key.MEDIA_ID) or h.id for h in hits}))
            gains.append(ndcg([int(relevant(h.payload, group)) for h in hits], n_relevant(group)))
        out[name] = {
            "distinct_media": round(float(np.mean(distinct)), 3),
            "nDCG@10": round(float(np.mean(gains)), 4),
        }
    out["lambda"] = mmr_lambda
    return out


# -- calibration: one threshold, every pair ---------------------------------------------------


def _half(key: str) -> int:
    return hashlib.sha256(key.encode("utf-8")).digest()[0] % 2


def _split(items: EvalItems) -> tuple[EvalItems, EvalItems]:
    halves = np.array([_half(k) for k in items.keys])
    parts = []
    for h in (0, 1):
        keep = halves == h
        parts.append(
            EvalItems(
                items.modality,
                [k for k, m in zip(items.keys, keep, strict=True) if m],
                items.groups[keep],
                items.vectors[keep],
            )
        )
    return parts[0], parts[1]


def _scores(q: EvalItems, t: EvalItems) -> tuple[np.ndarray, np.ndarray]:
    return (q.vectors @ t.vectors.T).ravel(), (q.groups[:, None] == t.groups[None, :]).ravel()


def calibration_shares(
    items: dict[Modality, EvalItems], pairs: Sequence[tuple[Modality, Modality]], *, threshold: float = 0.5
) -> dict[str, Any]:
    """Fit on half the queries (split by a hash of their key), measure on the other half: the
    share of relevant (query, target) pairs kept by one calibrated threshold, by one raw-cosine
    threshold (the median of the pairs' median relevant scores, so it too aims at half), and by
    one threshold on Platt-calibrated scores (probability of relevance), for every pair."""
    fitted: dict[str, Platt] = {}
    platt: dict[str, Platt] = {}
    medians = []
    held: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for q, t in pairs:
        name = f"{q}->{t}"
        fit_q, test_q = _split(items[q])
        s, rel = _scores(fit_q, items[t])
        if rel.sum() < 2 or not len(test_q.keys):
            continue
        fitted[name] = fit_relevant_quantiles(s, rel)
        platt[name] = fit_platt(s, rel)
        medians.append(float(np.median(s[rel])))
        held[name] = _scores(test_q, items[t])
    raw_threshold = float(np.median(medians))

    def shares(score: Callable[[str, np.ndarray], np.ndarray], cut: float) -> dict[str, float]:
        out = {}
        for name, (s, rel) in held.items():
            out[name] = round(float((score(name, s[rel]) >= cut).mean()), 4) if rel.any() else float("nan")
        return out

    def spread(values: dict[str, float]) -> float:
        v = [x for x in values.values() if not math.isnan(x)]
        return round(max(v) - min(v), 4) if v else float("nan")

    cal = Calibration(fitted)
    vec = np.vectorize(lambda f, x: f(float(x)))
    calibrated = shares(lambda n, s: vec(cal.maps[n], s), threshold)
    raw = shares(lambda n, s: s, raw_threshold)
    probability = shares(lambda n, s: vec(platt[n], s), threshold)
    return {
        "calibrated_threshold": threshold,
        "raw_threshold": round(raw_threshold, 4),
        "calibrated_shares": calibrated,
        "raw_shares": raw,
        "platt_shares": probability,
        "calibrated_spread": spread(calibrated),
        "raw_spread": spread(raw),
        "platt_spread": spread(probability),
    }

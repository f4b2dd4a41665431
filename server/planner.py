"""The query pipeline after encoding: candidates (staged ANN, frame re-scoring, recommend or RRF
fusion), calibration, thresholds and grouping by media. Plain functions over a VectorStore."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from encoders.calibration import Calibration
from encoders.modality import Modality
from encoders.vectors import unit
from indexer.filters import FilterError, FilterSpec, Match, MatchAny, validate
from indexer.query_plan import DenseQuery
from indexer.schema import VISUAL_TRACK, Key, StoredPoint
from indexer.store import Stages, VectorStore
from server.errors import InvalidArgument

MAX_GROUP_SIZE = 100
MAX_CANDIDATES = 10_000
# Defaults of the dense query's stages when a request leaves them unset.
DEFAULT_STAGES = Stages(oversampling=4.0, quantized=False, exact_rescore=True, mmr_lambda=None)


@dataclass(frozen=True)
class SearchParams:
    top_k: int
    modalities: tuple[Modality, ...] = ()
    filter: FilterSpec | None = None
    score_threshold: float | None = None  # on the raw cosine
    group_size: int = 1  # hits per media (media_id); top_k counts media
    stages: Stages = DEFAULT_STAGES
    frames_rescore: bool = True
    fusion: Literal["mean", "rrf"] = "mean"
    calibrated_threshold: float | None = None


@dataclass(frozen=True)
class Weighted:
    vector: np.ndarray
    modality: Modality
    weight: float = 1.0


@dataclass
class Plan:
    positives: list[Weighted]
    negatives: list[np.ndarray] = field(default_factory=list)
    exclude_ids: tuple[str, ...] = ()

    @property
    def modality(self) -> Modality:
        """The modality of the heaviest positive: it picks the calibration pair."""
        return max(self.positives, key=lambda p: p.weight).modality

    def mean_vector(self) -> np.ndarray:
        # Weights are relative: scale them to at most 1 so huge ones (3.4e38) cannot overflow
        # float32 into a vector of inf/nan that scores everything 0.
        top = max(p.weight for p in self.positives)
        total = sum((p.weight / top) * p.vector.astype(np.float64) for p in self.positives)
        return unit(np.asarray(total, dtype=np.float32))


@dataclass
class SearchOutcome:
    modality: Modality
    hits: list[StoredPoint]
    stage_ms: dict[str, float] = field(default_factory=dict)


def check_params(params: SearchParams, max_top_k: int) -> FilterSpec:
    """Validate everything that needs no encoding; returns the effective filter."""
    if not 1 <= params.top_k <= max_top_k:
        raise InvalidArgument(f"top_k must be between 1 and {max_top_k}, got {params.top_k}")
    if not 1 <= params.group_size <= MAX_GROUP_SIZE:
        raise InvalidArgument(f"group_size must be between 1 and {MAX_GROUP_SIZE}, got {params.group_size}")
    for name in ("score_threshold", "calibrated_threshold"):
        value = getattr(params, name)
        if value is not None and not math.isfinite(value):
            raise InvalidArgument(f"{name} must be a finite number")
    st = params.stages
    if not (math.isfinite(st.oversampling) and 1 <= st.oversampling <= 100):
        raise InvalidArgument(f"stages.oversampling must be between 1 and 100, got {st.oversampling}")
    if st.mmr_lambda is not None and not (math.isfinite(st.mmr_lambda) and 0 <= st.mmr_lambda <= 1):
        raise InvalidArgument(f"stages.mmr_lambda must be in [0, 1], got {st.mmr_lambda}")
    spec = FilterSpec()
    if params.filter is not None:
        try:
            spec = validate(params.filter)
        except FilterError as exc:
            raise InvalidArgument(str(exc)) from exc
    if params.modalities:
        spec = spec.and_(
            FilterSpec(must=(MatchAny(Key.MODALITY, tuple(m.value for m in params.modalities)),))
        )
    return spec


def check_weight(weight: float, field: str) -> float:
    if not math.isfinite(weight) or weight < 0:
        raise InvalidArgument(f"{field}.weight must be a finite number >= 0, got {weight}")
    return weight or 1.0  # 0 (unset in proto3) means 1


def run(
    store: VectorStore,
    plan: Plan,
    params: SearchParams,
    spec: FilterSpec,
    calibration: Calibration,
    *,
    check: Callable[[], None] | None = None,
) -> SearchOutcome:
    """Candidates, calibration, thresholds and grouping. `check` runs before each store round
    and raises to stop (a passed deadline)."""
    outcome = SearchOutcome(plan.modality, [])
    wants_video = not params.modalities or Modality.VIDEO in params.modalities
    limit = params.top_k * params.group_size * 3 + 10
    grouped: list[StoredPoint] = []
    for _ in range(4):  # widen the candidate pool until top_k media are filled or none are left
        if check is not None:
            check()
        t0 = time.perf_counter()
        hits = _candidates(store, plan, params, spec, limit, wants_video)
        outcome.stage_ms["search"] = outcome.stage_ms.get("search", 0.0) + (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        _calibrate(store, hits, plan, params, calibration)
        if params.calibrated_threshold is not None:
            hits = [h for h in hits if (h.calibrated or 0.0) >= params.calibrated_threshold]
        grouped = group_by_media(hits, params.top_k, params.group_size)
        outcome.stage_ms["group"] = (time.perf_counter() - t0) * 1e3
        media = {h.payload.get(Key.MEDIA_ID) or h.id for h in grouped}
        if len(media) >= params.top_k or len(hits) < limit or limit >= MAX_CANDIDATES:
            break
        limit = min(limit * 4, MAX_CANDIDATES)
    outcome.hits = grouped
    return outcome


def _candidates(
    store: VectorStore, plan: Plan, params: SearchParams, spec: FilterSpec, limit: int, wants_video: bool
) -> list[StoredPoint]:
    vectors = [p.vector for p in plan.positives]
    if plan.negatives:
        return store.recommend(
            [plan.mean_vector()], plan.negatives, limit=limit, filter=spec, exclude_ids=plan.exclude_ids
        )
    if params.fusion == "rrf" and len(vectors) > 1:
        return store.fuse(
            vectors,
            weights=[p.weight for p in plan.positives],
            limit=limit,
            per_query=limit,
            filter=spec,
            exclude_ids=plan.exclude_ids,
        )
    q = plan.mean_vector()
    threshold, excluded = params.score_threshold, plan.exclude_ids
    dense = DenseQuery(
        q, limit, filter=spec, score_threshold=threshold, exclude_ids=excluded, stages=params.stages
    )
    if not (wants_video and params.frames_rescore):
        return store.query_batch([dense])[0]
    # Video segments are re-scored by MAX_SIM over their frames, so a query that matches one
    # frame finds its segment even when the segment's mean vector lies elsewhere. Both lists
    # come back from one round trip.
    segments = spec.and_(
        FilterSpec(must=(Match(Key.MODALITY, Modality.VIDEO.value), Match(Key.TRACK, VISUAL_TRACK)))
    )
    frames_prefetch = max(int(params.stages.oversampling * limit), 200)
    frames = DenseQuery(
        q,
        limit,
        filter=segments,
        score_threshold=threshold,
        exclude_ids=excluded,
        frames_prefetch=frames_prefetch,
    )
    hits, rescored = store.query_batch([dense, frames])
    best = {h.id: h for h in hits}
    for h in rescored:
        if h.id not in best or h.score > best[h.id].score:
            best[h.id] = h
    if params.stages.mmr_lambda is not None:
        # MMR's order is the point of MMR: keep it, and rank segments it did not return after it.
        listed = {h.id for h in hits}
        extra = sorted((h for i, h in best.items() if i not in listed), key=lambda h: h.score, reverse=True)
        return [best[h.id] for h in hits] + extra
    return sorted(best.values(), key=lambda h: h.score, reverse=True)


def _calibrate(
    store: VectorStore,
    hits: Sequence[StoredPoint],
    plan: Plan,
    params: SearchParams,
    calibration: Calibration,
) -> None:
    cosines = {h.id: h.score for h in hits}
    if plan.negatives or (params.fusion == "rrf" and len(plan.positives) > 1):
        # Recommend and RRF scores are not cosines: calibrate each hit's cosine to the mean query.
        q = plan.mean_vector()
        for p in store.get([h.id for h in hits], with_vectors=True):
            if p.vector is not None:
                cosines[p.id] = float(p.vector @ q)
    for h in hits:
        target = str(h.payload.get(Key.MODALITY, Modality.TEXT.value))
        h.calibrated = calibration.score(plan.modality.value, target, cosines[h.id])


def group_by_media(hits: Sequence[StoredPoint], top_k: int, group_size: int) -> list[StoredPoint]:
    """Hits in their ranked order (best first, or MMR's order), from at most `top_k` media and at
    most `group_size` per media (media_id), so one long video cannot fill the page. Qdrant's own
    grouping cannot merge our two scoring branches (dense and frame re-scoring): it runs here."""
    per_media: dict[str, int] = {}
    out: list[StoredPoint] = []
    for h in hits:
        key = str(h.payload.get(Key.MEDIA_ID) or h.id)
        count = per_media.get(key)
        if count is None and len(per_media) >= top_k:
            continue
        if (count or 0) < group_size:
            per_media[key] = (count or 0) + 1
            out.append(h)
    return out

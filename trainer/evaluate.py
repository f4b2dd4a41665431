"""Retrieval quality of a bundle on a manifest: Recall@1/5/10 and mAP per (query -> target) pair.

Every item of the manifest is embedded by the service's own embedding path (encoders.embed):
long text as the mean of its chunks, audio as the mean of its windows, video of its frames. Relevance is
class-level: a target is relevant to a query when both carry the same `group`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from encoders.calibration import Calibration, fit_relevant_quantiles
from encoders.embed import Embedder, Failure
from encoders.modality import Modality
from trainer.data import embed_input
from trainer.manifest import ItemRef, Manifest

KS = (1, 5, 10)


@dataclass
class EvalItems:
    modality: Modality
    keys: list[str]
    groups: np.ndarray
    vectors: np.ndarray


def collect_items(manifest: Manifest) -> dict[Modality, dict[str, tuple[ItemRef, str]]]:
    """Unique items per modality with their group."""
    out: dict[Modality, dict[str, tuple[ItemRef, str]]] = {}
    for p in manifest.pairs:
        for ref in (p.a, p.b):
            out.setdefault(ref.modality, {})[ref.key] = (ref, p.group)
    return out


def embed_items(embedder: Embedder, manifest: Manifest) -> dict[Modality, EvalItems]:
    """Every item's vector, through the same embedding path as the service (one batched pass)."""
    result: dict[Modality, EvalItems] = {}
    for modality, items in collect_items(manifest).items():
        refs = list(items.values())
        embedded = embedder.embed([embed_input(ref) for ref, _ in refs], video_audio=False)
        # A file that cannot be decoded is left out of the evaluation.
        kept = [
            (key, group, e)
            for key, (_, group), e in zip(items, refs, embedded, strict=True)
            if not isinstance(e, Failure)
        ]
        if kept:
            result[modality] = EvalItems(
                modality,
                [k for k, _, _ in kept],
                np.array([g for _, g, _ in kept]),
                np.stack([e.pooled for _, _, e in kept]),
            )
    return result


def retrieval_metrics(queries: EvalItems, targets: EvalItems) -> dict[str, float]:
    sims = queries.vectors @ targets.vectors.T
    order = np.argsort(-sims, axis=1)
    relevant = targets.groups[order] == queries.groups[:, None]  # (q, t) in ranked order
    out = {f"R@{k}": float(relevant[:, :k].any(axis=1).mean()) for k in KS}
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    n_rel = relevant.sum(axis=1)
    ap = np.where(n_rel > 0, (relevant * hits / ranks).sum(axis=1) / np.maximum(n_rel, 1), 0.0)
    out["mAP"] = float(ap.mean())
    return {k: round(v, 4) for k, v in out.items()}


def subset(items: EvalItems, groups: Sequence[str]) -> EvalItems:
    """The items whose group is one of `groups`."""
    keep = np.isin(items.groups, list(groups))
    return EvalItems(
        items.modality,
        [k for k, m in zip(items.keys, keep, strict=True) if m],
        items.groups[keep],
        items.vectors[keep],
    )


def confusable_recall(
    queries: EvalItems, targets: EvalItems, sets: Iterable[tuple[str, Sequence[str]]]
) -> dict[str, float]:
    """Recall@1 where queries and candidates are restricted to one confusable set of groups at a
    time (groups that differ in one attribute): {set kind: R@1 over that kind's sets, weighted
    by their queries, ..., "all": over every set}. Sets with no query or no target are skipped."""
    hits: dict[str, list[float]] = {}
    for kind, groups in sets:
        q, t = subset(queries, groups), subset(targets, groups)
        if len(q.keys) and len(t.keys):
            n = len(q.keys)
            r1 = retrieval_metrics(q, t)["R@1"]
            for name in (kind, "all"):
                hit = hits.setdefault(name, [0.0, 0.0])
                hit[0] += r1 * n
                hit[1] += n
    return {name: round(h / n, 4) for name, (h, n) in hits.items()}


def neighbourhood_recall(
    queries: EvalItems, targets: EvalItems, confusers: Mapping[str, Collection[str]]
) -> float | None:
    """Recall@1 among look-alikes: each query's candidates are the targets of its own group and of
    the groups confusable with it (`confusers[group]`); queries of groups with no confusers are
    left out. None when no query has any."""
    sims = queries.vectors @ targets.vectors.T
    hits = []
    for i, group in enumerate(queries.groups.tolist()):
        near = confusers.get(group)
        if not near:
            continue
        allowed = np.isin(targets.groups, [group, *near])
        if allowed.any():
            best = int(np.argmax(np.where(allowed, sims[i], -np.inf)))
            hits.append(targets.groups[best] == group)
    return round(float(np.mean(hits)), 4) if hits else None


def evaluate(embedder: Embedder, manifest: Manifest) -> tuple[dict[str, dict[str, float]], Calibration]:
    """Metrics {"text->image": {"R@1": .., "R@5": .., "R@10": .., "mAP": ..}, ...} for every pair
    of different modalities in the manifest, and a score calibration fitted on the same pairs
    (the calibrated score estimates the share of the pair's relevant results that score lower)."""
    items = embed_items(embedder, manifest)
    pairs: dict[str, dict[str, float]] = {}
    calibration = Calibration()
    for q in Modality:
        for t in Modality:
            if q != t and q in items and t in items:
                name = f"{q}->{t}"
                pairs[name] = retrieval_metrics(items[q], items[t])
                scores = items[q].vectors @ items[t].vectors.T
                relevant = items[q].groups[:, None] == items[t].groups[None, :]
                if relevant.sum() >= 2:
                    calibration.maps[name] = fit_relevant_quantiles(scores.ravel(), relevant.ravel())
    return pairs, calibration


def format_table(pairs: dict[str, dict[str, float]]) -> str:
    lines = [f"{'pair':<16}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'mAP':>8}"]
    for name, m in pairs.items():
        lines.append(f"{name:<16}{m['R@1']:>8.3f}{m['R@5']:>8.3f}{m['R@10']:>8.3f}{m['mAP']:>8.3f}")
    return "\n".join(lines)

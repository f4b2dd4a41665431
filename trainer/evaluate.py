"""Retrieval quality of a bundle on a manifest: Recall@1/5/10 and mAP per (query -> target) pair.

Every item of the manifest is embedded the way the service embeds it (images and text by their
towers, audio as the mean of its windows, video as the mean of its frames). Relevance is
class-level: a target is relevant to a query when both carry the same `group`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from encoders.calibration import Calibration, fit_platt
from encoders.decode import MediaDecoder
from encoders.encoder import Encoder
from encoders.errors import MediaDecodeError
from encoders.media import decode_image
from encoders.modality import Modality
from encoders.vectors import mean_unit
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


def embed_items(encoder: Encoder, decoder: MediaDecoder, manifest: Manifest) -> dict[Modality, EvalItems]:
    result: dict[Modality, EvalItems] = {}
    for modality, items in collect_items(manifest).items():
        keys, groups, vectors = [], [], []
        for key, (ref, group) in items.items():
            try:
                vec = _embed_one(encoder, decoder, ref)
            except MediaDecodeError:
                continue  # a file that cannot be decoded is left out of the evaluation
            keys.append(key)
            groups.append(group)
            vectors.append(vec)
        if keys:
            result[modality] = EvalItems(modality, keys, np.array(groups), np.stack(vectors))
    return result


def _embed_one(encoder: Encoder, decoder: MediaDecoder, ref: ItemRef) -> np.ndarray:
    if ref.modality == Modality.TEXT:
        return encoder.embed_texts([ref.text or ""])[0]
    assert ref.path is not None
    if ref.modality == Modality.IMAGE:
        return encoder.embed_images([decode_image(ref.path.read_bytes(), name=str(ref.path))])[0]
    if ref.modality == Modality.AUDIO:
        return encoder.embed_audio(decoder.audio(ref.path, name=str(ref.path)).samples).pooled
    return mean_unit(encoder.embed_frames(decoder.video(ref.path, name=str(ref.path)).frames))


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


def evaluate(
    encoder: Encoder, decoder: MediaDecoder, manifest: Manifest
) -> tuple[dict[str, dict[str, float]], Calibration]:
    """Metrics {"text->image": {"R@1": .., "R@5": .., "R@10": .., "mAP": ..}, ...} for every pair
    of different modalities in the manifest, and a score calibration fitted on the same pairs."""
    items = embed_items(encoder, decoder, manifest)
    pairs: dict[str, dict[str, float]] = {}
    calibration = Calibration()
    for q in Modality:
        for t in Modality:
            if q != t and q in items and t in items:
                name = f"{q}->{t}"
                pairs[name] = retrieval_metrics(items[q], items[t])
                scores = items[q].vectors @ items[t].vectors.T
                relevant = items[q].groups[:, None] == items[t].groups[None, :]
                calibration.maps[name] = fit_platt(scores.ravel(), relevant.ravel())
    return pairs, calibration


def format_table(pairs: dict[str, dict[str, float]]) -> str:
    lines = [f"{'pair':<16}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'mAP':>8}"]
    for name, m in pairs.items():
        lines.append(f"{name:<16}{m['R@1']:>8.3f}{m['R@5']:>8.3f}{m['R@10']:>8.3f}{m['mAP']:>8.3f}")
    return "\n".join(lines)

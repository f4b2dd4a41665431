"""Score calibration per (query modality, target modality) pair.

Raw cosine scores are not comparable across pairs: text->image similarities live in another range
than audio->video ones. A bundle can carry one logistic map per pair, fitted on labelled held-out
pairs, so that one threshold means the same for every pair. Two fits give the map its meaning:

- :func:`fit_relevant_quantiles` (what the trainer fits): the calibrated score estimates the share
  of the pair's relevant results that score lower, so a calibrated threshold t keeps about 1 - t
  of the relevant results of every pair, however separable the pair is;
- :func:`fit_platt`: the calibrated score estimates the probability that a result is relevant.
  A threshold then keeps a share of the relevant results that depends on how well the pair
  separates them (most of them for text->image, few for a weak pair).

Pairs without a fitted map fall back to the raw cosine clipped to [0, 1], and say so (`fitted`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class Platt:
    a: float
    b: float

    def __call__(self, score: float) -> float:
        z = self.a * score + self.b
        return 1.0 / (1.0 + math.exp(-z)) if z > -60 else 0.0


@dataclass
class Calibration:
    maps: dict[str, Platt] = field(default_factory=dict)  # "text->image" -> Platt

    def fitted(self, query: str, target: str) -> bool:
        return f"{query}->{target}" in self.maps

    def score(self, query: str, target: str, raw: float) -> float:
        platt = self.maps.get(f"{query}->{target}")
        if platt is None:
            return min(1.0, max(0.0, raw))
        return platt(raw)

    def save(self, folder: Path) -> Path:
        path = folder / CALIBRATION_FILE
        path.write_text(json.dumps({k: {"a": p.a, "b": p.b} for k, p in sorted(self.maps.items())}, indent=2))
        return path

    @classmethod
    def load(cls, folder: Path) -> Calibration:
        path = folder / CALIBRATION_FILE
        if not path.is_file():
            return cls()
        raw = json.loads(path.read_text())
        return cls({k: Platt(float(v["a"]), float(v["b"])) for k, v in raw.items()})


def fit_relevant_quantiles(scores: np.ndarray, relevant: np.ndarray) -> Platt:
    """The logistic distribution matched to the median and quartiles of the relevant results'
    scores, as a map: calibrated(s) estimates the share of relevant results scoring below s.
    Quantiles, not a mean and variance, so a few outliers do not move it."""
    rel = np.asarray(scores, dtype=np.float64)[np.asarray(relevant, dtype=bool)]
    if len(rel) < 2:
        raise ValueError("calibration needs at least two relevant scores for the pair")
    q1, median, q3 = np.quantile(rel, [0.25, 0.5, 0.75])
    # A logistic with scale s has its quartiles at median -/+ s*ln(3).
    a = 2 * math.log(3) / max(float(q3 - q1), 1e-6)
    return Platt(a, -a * float(median))


def fit_platt(scores: np.ndarray, relevant: np.ndarray, *, iterations: int = 100) -> Platt:
    """Logistic regression of relevance on the raw score (Newton's method, slightly regularised)."""
    x = scores.astype(np.float64)
    y = relevant.astype(np.float64)
    # Platt's target smoothing keeps the fit finite when the classes separate perfectly.
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    t = np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, b = 1.0, 0.0
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(a * x + b)))
        g = np.array([((p - t) * x).sum(), (p - t).sum()]) + 1e-3 * np.array([a, 0.0])
        w = p * (1 - p)
        h = np.array([[(w * x * x).sum() + 1e-3, (w * x).sum()], [(w * x).sum(), w.sum() + 1e-9]])
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if abs(step).max() < 1e-8:
            break
    return Platt(float(a), float(b))

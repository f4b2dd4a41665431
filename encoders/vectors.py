"""Small vector helpers shared by every layer: the space is cosine, so vectors stay unit-norm."""

from __future__ import annotations

import numpy as np


def unit(v: np.ndarray) -> np.ndarray:
    """`v` scaled to length 1 (a zero vector stays zero), as float32."""
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def mean_unit(rows: np.ndarray) -> np.ndarray:
    """The normalised mean of unit rows: how frames, windows and chunks pool into one vector."""
    return unit(rows.mean(axis=0))

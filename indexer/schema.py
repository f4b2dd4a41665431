"""Collection schema and the typed records that pass between the indexer, stores and server."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DENSE = "dense"  # name of the shared-space vector every point has
FRAMES = "frames"  # per-frame vectors of a video segment (multivector, MAX_SIM), for re-scoring
DEFAULT_COLLECTION = "mmsearch"
SCHEMA_VERSION = 1

# Payload fields written by the system; anything else a filter names is user metadata under META.
META = "meta"
SYSTEM_FIELDS = frozenset(
    {
        "modality",
        "source",
        "content_hash",
        "media_id",
        "segment",
        "t_start",
        "t_end",
        "tenant",
        "bundle_id",
        "text",
        "size",
        "mtime",
        "width",
        "height",
        "external_id",
        "track",
        "pooled",
        "duration",
    }
)
# Keyword fields that get a payload index: the common filter keys.
KEYWORD_INDEXES = ("modality", "media_id", "content_hash", "tenant", "external_id")

# Namespace for ids derived from names (caller ids, content hashes); any fixed UUID works.
_ID_NAMESPACE = uuid.UUID("6b1f0a8e-2c5d-4e0f-9a51-3d7c2b8e4f10")


@dataclass(frozen=True)
class CollectionSchema:
    """What a collection holds: which embedding space, and its dimension."""

    bundle_id: str
    dim: int
    name: str = DEFAULT_COLLECTION

    def to_metadata(self) -> dict[str, Any]:
        return {"bundle_id": self.bundle_id, "dim": self.dim, "schema_version": SCHEMA_VERSION}


@dataclass
class PointRecord:
    """A point to write."""

    id: str
    vector: np.ndarray
    payload: dict[str, Any]
    frames: np.ndarray | None = None  # (n_frames, dim) for video segments


@dataclass
class StoredPoint:
    """A point read back; `score` is set for query results."""

    id: str
    payload: dict[str, Any]
    score: float = 0.0
    vector: np.ndarray | None = None
    calibrated: float | None = None  # set by the query pipeline: the score on a comparable scale


@dataclass
class StoreInfo:
    points: int
    schema: CollectionSchema
    kind: str
    by_modality: dict[str, int] = field(default_factory=dict)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def point_id(key: str, segment: int | str = 0) -> str:
    """Deterministic point id (a UUID string, as Qdrant requires) for a key and segment index.

    Same content (or caller id) and segment -> same id, so writing it again replaces instead of
    adding."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{key}#{segment}"))


def normalize_id(raw: str) -> str:
    """Canonical form of a point id given by a caller. Raises ValueError if it is not a UUID."""
    return str(uuid.UUID(raw))


def dense_vector(vector: Any) -> np.ndarray | None:
    """The shared-space vector out of a store record's vector field (named or bare)."""
    if vector is None:
        return None
    values = vector[DENSE] if isinstance(vector, dict) else vector
    return np.asarray(values, dtype=np.float32)


def named_vectors(p: PointRecord) -> dict[str, Any]:
    """A point's vectors by name, as both Qdrant APIs take them."""
    out: dict[str, Any] = {DENSE: p.vector.astype(np.float32).tolist()}
    if p.frames is not None:
        out[FRAMES] = p.frames.astype(np.float32).tolist()
    return out

"""Collection schema and the typed records that pass between the indexer, stores and server."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

import numpy as np

DENSE = "dense"  # name of the shared-space vector every point has
FRAMES = "frames"  # per-frame vectors of a video segment (multivector, MAX_SIM), for re-scoring
DEFAULT_COLLECTION = "mmsearch"
SCHEMA_VERSION = 1


class Key(StrEnum):
    """Every payload key the system writes: the one place they are spelled. PointPayload's
    fields carry the same names (a unit test holds the two together)."""

    MODALITY = "modality"
    SOURCE = "source"
    CONTENT_HASH = "content_hash"
    MEDIA_ID = "media_id"
    BUNDLE_ID = "bundle_id"
    META = "meta"
    TENANT = "tenant"
    EXTERNAL_ID = "external_id"
    SIZE = "size"
    MTIME = "mtime"
    SEGMENT = "segment"
    SEGMENTS = "segments"
    TEXT = "text"
    CHAR_START = "char_start"
    CHAR_END = "char_end"
    WIDTH = "width"
    HEIGHT = "height"
    TRACK = "track"
    T_START = "t_start"
    T_END = "t_end"
    POOLED = "pooled"
    DURATION = "duration"
    FRAME_TIMES = "frame_times"
    POINT_IDS = "point_ids"


# User metadata lives under META; a filter key that is not a system field is read there.
META = Key.META.value
SYSTEM_FIELDS = frozenset(k.value for k in Key if k is not Key.META)
# Keyword fields that get a payload index: the common filter keys.
KEYWORD_INDEXES = (Key.MODALITY, Key.MEDIA_ID, Key.CONTENT_HASH, Key.TENANT, Key.EXTERNAL_ID)
# Tracks of time-based media.
AUDIO_TRACK = "audio"
VISUAL_TRACK = "visual"
# Ids are derived within a namespace, so identical files of two tenants never share a point.
DEFAULT_NAMESPACE = "default"

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


def point_id(key: str, segment: int | str = 0, namespace: str = DEFAULT_NAMESPACE) -> str:
    """Deterministic point id (a UUID string, as Qdrant requires) for (namespace, key, segment),
    where the key is a content hash or a caller id.

    Same namespace, content and segment -> same id, so writing it again replaces instead of
    adding; another namespace never collides."""
    # The default namespace keeps the ids of indexes built before namespaces existed.
    name = f"{key}#{segment}" if namespace == DEFAULT_NAMESPACE else f"{namespace}/{key}#{segment}"
    return str(uuid.uuid5(_ID_NAMESPACE, name))


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


@dataclass
class PointPayload:
    """The stored payload of a point, typed. The only code that maps to and from the payload
    dict the stores hold; unset optional fields are left out of it."""

    modality: str
    source: str
    content_hash: str
    media_id: str
    bundle_id: str
    meta: dict[str, Any] = field(default_factory=dict)
    tenant: str | None = None  # set outside the default namespace
    external_id: str | None = None  # the caller's id for the item
    size: float | None = None
    mtime: float | None = None
    segment: int = 0
    segments: int = 1
    # text chunks
    text: str | None = None
    char_start: int | None = None
    char_end: int | None = None
    # images
    width: int | None = None
    height: int | None = None
    # time-based media
    track: str | None = None
    t_start: float | None = None
    t_end: float | None = None
    pooled: bool | None = None  # the whole file rather than one window / segment
    duration: float | None = None
    frame_times: list[float] | None = None
    # on the media's sentinel point: every point of the media, so a re-ingest needs no scan
    point_ids: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PointPayload:
        """Read a stored payload; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        for required in (Key.MODALITY, Key.SOURCE, Key.CONTENT_HASH, Key.MEDIA_ID, Key.BUNDLE_ID):
            values.setdefault(required.value, "")
        return cls(**values)


def payload_value(payload: dict[str, Any], key: str) -> Any:
    """The value at a dotted payload path (``meta.label``), or None."""
    value: Any = payload
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value

"""Checks on points computed elsewhere (a Ray ingest's encoder actors) before they are written.

A point is accepted only if it is exactly what the ingest pipeline would have written: its
vectors have the collection's dimension and finite values, its payload has only the keys and
types of indexer.schema.PointPayload, it names the collection's bundle, and its id and media id
derive from its payload in the writer's id namespace (indexer.media_points), so a remote writer
can neither mix embedding spaces nor write ids that another tenant or another item owns.
Torch-free.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

import numpy as np

from encoders.modality import Modality
from indexer.schema import (
    AUDIO_TRACK,
    DEFAULT_NAMESPACE,
    VISUAL_TRACK,
    Key,
    PointPayload,
    PointRecord,
    point_id,
)

# indexer.media_points.POOLED, spelled here so this module stays free of torch (a unit test
# holds the two together).
POOLED = "pooled"
PAYLOAD_KEYS = frozenset(f.name for f in fields(PointPayload))
_HEX64 = re.compile(r"[0-9a-f]{64}")


class PointError(ValueError):
    """A point is malformed; the message names the point and the problem."""


def item_key(payload: PointPayload) -> str:
    """What an item's point ids derive from (indexer.ingest_work.identify)."""
    return f"id:{payload.external_id}" if payload.external_id else f"sha256:{payload.content_hash}"


def segment_label(payload: PointPayload) -> int | str:
    """The segment a point's id derives from (indexer.media_points)."""
    timed = payload.modality in (Modality.AUDIO, Modality.VIDEO)
    if not timed:
        return payload.segment
    if payload.modality == Modality.VIDEO and payload.track == VISUAL_TRACK:
        return POOLED if payload.pooled else f"v{payload.segment}"
    if payload.pooled:
        return f"{POOLED}-audio" if payload.modality == Modality.VIDEO else POOLED
    return f"a{payload.segment}"


def is_sentinel(payload: PointPayload) -> bool:
    """The point whose presence marks its item as fully written; it lists the item's points."""
    return segment_label(payload) == (POOLED if payload.modality in (Modality.AUDIO, Modality.VIDEO) else 0)


def check_points(points: Sequence[PointRecord], *, bundle_id: str, dim: int, namespace: str) -> None:
    """Raise PointError for the first point that the pipeline would not have written as it is."""
    seen: set[str] = set()
    for i, p in enumerate(points):
        where = f"points[{i}] ({str(p.id)[:64]})"
        try:
            _check_point(p, bundle_id=bundle_id, dim=dim, namespace=namespace)
        except PointError as exc:
            raise PointError(f"{where}: {exc}") from None
        if p.id in seen:
            raise PointError(f"{where}: the id appears twice in one write")
        seen.add(p.id)


def _check_point(p: PointRecord, *, bundle_id: str, dim: int, namespace: str) -> None:
    try:
        if str(uuid.UUID(p.id)) != p.id:
            raise ValueError
    except (ValueError, TypeError, AttributeError):
        raise PointError("id is not a UUID in canonical form (indexer.schema.point_id)") from None
    _check_vector(p.vector, dim)
    payload = _check_payload(p.payload, bundle_id=bundle_id, namespace=namespace)
    framed = payload.modality == Modality.VIDEO and payload.track == VISUAL_TRACK and not payload.pooled
    if framed and p.frames is None:
        raise PointError("a video segment's visual point needs its frame vectors (frames)")
    if p.frames is not None:
        if not framed:
            raise PointError("only a video segment's visual point has frame vectors")
        f = np.asarray(p.frames)
        if f.ndim != 2 or f.shape[1] != dim or len(f) == 0:
            raise PointError(f"frames have shape {f.shape}, expected (n >= 1, {dim})")
        if not np.isfinite(f).all():
            raise PointError("frames hold a non-finite value")
    key = item_key(payload)
    if payload.media_id != point_id(key, -1, namespace):
        raise PointError(
            f"media_id does not derive from the item's key in namespace {namespace!r} "
            "(indexer.schema.point_id(key, -1, namespace))"
        )
    if p.id != point_id(key, segment_label(payload), namespace):
        raise PointError(
            f"id does not derive from its payload in namespace {namespace!r} "
            "(indexer.schema.point_id(key, segment, namespace), as indexer.media_points names segments)"
        )
    if is_sentinel(payload):
        if payload.point_ids is None or p.id not in payload.point_ids:
            raise PointError("an item's sentinel point lists every point of the item, itself too (point_ids)")
    elif payload.point_ids is not None:
        raise PointError("point_ids belongs on the item's sentinel point only")


def _check_vector(v: Any, dim: int) -> None:
    a = np.asarray(v)
    if a.shape != (dim,):
        raise PointError(f"vector has shape {a.shape}, expected ({dim},)")
    if not np.isfinite(a).all():
        raise PointError("vector holds a non-finite value")
    if not float(np.abs(a).max(initial=0.0)) > 0:
        raise PointError("vector is all zeros (no direction to compare by cosine)")


def _check_payload(d: Any, *, bundle_id: str, namespace: str) -> PointPayload:
    if not isinstance(d, dict):
        raise PointError("payload is not a JSON object")
    unknown = sorted(set(d) - PAYLOAD_KEYS)
    if unknown:
        raise PointError(f"payload key {unknown[0][:64]!r} is not one of {', '.join(sorted(PAYLOAD_KEYS))}")
    for name in (Key.MODALITY, Key.SOURCE, Key.CONTENT_HASH, Key.MEDIA_ID, Key.BUNDLE_ID):
        if name not in d:
            raise PointError(f"payload has no {name}")
    for name, value in d.items():
        check = _FIELD_CHECKS[name]
        if value is not None and not check(value):
            raise PointError(f"payload {name} = {_show(value)} is not {_FIELD_KINDS[name]}")
    payload = PointPayload.from_dict(d)
    if payload.bundle_id != bundle_id:
        raise PointError(
            f"payload bundle_id {payload.bundle_id[:64]!r} is not the written bundle {bundle_id}"
        )
    if not _HEX64.fullmatch(payload.content_hash):
        raise PointError("payload content_hash is not a SHA-256 hex digest")
    expected_tenant = None if namespace == DEFAULT_NAMESPACE else namespace
    if payload.tenant is not None and payload.tenant != expected_tenant:
        writer = f"{expected_tenant!r}" if expected_tenant else "the default tenant, whose points carry none"
        raise PointError(f"payload tenant {payload.tenant[:64]!r} is not the writer's ({writer})")
    if payload.modality != Modality.TEXT and payload.text is not None:
        raise PointError("only text points carry text")
    if payload.modality in (Modality.AUDIO, Modality.VIDEO) and payload.track is None:
        raise PointError(f"a {payload.modality} point needs its track ({AUDIO_TRACK} or {VISUAL_TRACK})")
    if payload.track is not None and (
        payload.modality not in (Modality.AUDIO, Modality.VIDEO)
        or (payload.modality == Modality.AUDIO and payload.track != AUDIO_TRACK)
    ):
        raise PointError(f"a {payload.modality} point has no {payload.track} track")
    return payload


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 64 else text[:61] + "..."


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _uuid(v: Any) -> bool:
    try:
        return isinstance(v, str) and str(uuid.UUID(v)) == v
    except ValueError:
        return False


_MODALITIES = frozenset(m.value for m in Modality)
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "modality": (lambda v: v in _MODALITIES, f"one of {', '.join(sorted(_MODALITIES))}"),
    "source": (lambda v: isinstance(v, str), "a string"),
    "content_hash": (lambda v: isinstance(v, str), "a string"),
    "media_id": (_uuid, "a UUID"),
    "bundle_id": (lambda v: isinstance(v, str), "a string"),
    "meta": (lambda v: isinstance(v, dict), "an object"),
    "tenant": (lambda v: isinstance(v, str), "a string"),
    "external_id": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "size": (_number, "a number"),
    "mtime": (_number, "a number"),
    "segment": (_count, "an integer >= 0"),
    "segments": (lambda v: _count(v) and v >= 1, "an integer >= 1"),
    "text": (lambda v: isinstance(v, str), "a string"),
    "char_start": (_count, "an integer >= 0"),
    "char_end": (_count, "an integer >= 0"),
    "width": (_count, "an integer >= 0"),
    "height": (_count, "an integer >= 0"),
    "track": (lambda v: v in (AUDIO_TRACK, VISUAL_TRACK), f"{AUDIO_TRACK!r} or {VISUAL_TRACK!r}"),
    "t_start": (_number, "a number"),
    "t_end": (_number, "a number"),
    "pooled": (lambda v: isinstance(v, bool), "true or false"),
    "duration": (_number, "a number"),
    "frame_times": (lambda v: isinstance(v, list) and all(_number(x) for x in v), "a list of numbers"),
    "point_ids": (
        lambda v: isinstance(v, list) and len(v) > 0 and all(_uuid(x) for x in v),
        "a list of UUIDs",
    ),
}
_FIELD_CHECKS = {k: c for k, (c, _) in _FIELDS.items()}
_FIELD_KINDS = {k: kind for k, (_, kind) in _FIELDS.items()}

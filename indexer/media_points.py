"""Point records of one embedded item: text chunks, an image, audio windows, video segments.

Text: one point per chunk. Image: one point. Audio: one point per overlapping window of the audio
tower, and a pooled point for the whole clip. Video: fixed-length segments; each segment's visual
point carries its frame vectors (multivector, re-scored with MAX_SIM) and their normalised mean as
its dense vector, and its audio point the audio tower's vector for that stretch of the track. One
pooled point per track covers the whole video.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from encoders.embed import AudioEmbedding, Embedding, ImageEmbedding, TextEmbedding, VideoEmbedding
from encoders.vectors import mean_unit
from indexer.schema import AUDIO_TRACK, VISUAL_TRACK, PointPayload, PointRecord, point_id

POOLED = "pooled"  # the sentinel segment key: present once a media file is fully indexed
# segment -> point id within one item's key and namespace
_Ids = Callable[[int | str], str]


def sentinel_segment(timed: bool) -> int | str:
    """The segment whose point marks a media file as fully indexed."""
    return POOLED if timed else 0


def item_points(
    key: str, base: PointPayload, emb: Embedding, namespace: str
) -> tuple[list[PointRecord], str | None]:
    """The item's points, and a note when part of it could not be indexed (else None)."""

    def pid(segment: int | str) -> str:
        return point_id(key, segment, namespace)

    if isinstance(emb, TextEmbedding):
        n = len(emb.chunks)
        return [
            _record(
                pid(c.index),
                v,
                replace(base, segment=c.index, segments=n, text=c.text, char_start=c.start, char_end=c.end),
            )
            for c, v in zip(emb.chunks, emb.vectors, strict=True)
        ], None
    if isinstance(emb, ImageEmbedding):
        return [_record(pid(0), emb.pooled, replace(base, width=emb.width, height=emb.height))], None
    if isinstance(emb, AudioEmbedding):
        return audio_points(pid, base, emb), None
    return video_points(pid, base, emb), emb.note


def audio_points(pid: _Ids, base: PointPayload, emb: AudioEmbedding) -> list[PointRecord]:
    n = len(emb.windows)
    audio = replace(base, track=AUDIO_TRACK, segments=n)
    points = [
        _record(
            pid(POOLED), emb.pooled, replace(audio, segment=0, t_start=0.0, t_end=emb.duration, pooled=True)
        )
    ]
    points += [
        _record(pid(f"a{k}"), emb.vectors[k], replace(audio, segment=k, t_start=t0, t_end=t1, pooled=False))
        for k, (t0, t1) in enumerate(emb.windows)
    ]
    return points


def video_points(pid: _Ids, base: PointPayload, emb: VideoEmbedding) -> list[PointRecord]:
    seg = emb.segment_seconds
    n_segments = max(1, math.ceil(emb.duration / seg))
    video = replace(base, duration=emb.duration, segments=n_segments)
    visual = replace(video, track=VISUAL_TRACK)
    points = [_record(pid(POOLED), emb.pooled, _whole(visual, emb.duration))]
    for k in range(n_segments):
        t0, t1 = k * seg, min((k + 1) * seg, emb.duration)
        in_seg = (emb.frame_times >= t0) & (emb.frame_times < t1)
        if not in_seg.any():  # frames were spread thinner than one per segment (frame cap)
            continue
        frames = emb.frame_vectors[in_seg]
        times = [round(float(t), 3) for t in emb.frame_times[in_seg]]
        payload = replace(visual, segment=k, t_start=t0, t_end=t1, pooled=False, frame_times=times)
        points.append(_record(pid(f"v{k}"), mean_unit(frames), payload, frames=frames))
    if emb.audio_pooled is None:
        return points
    audio = replace(video, track=AUDIO_TRACK)
    for (k, t0, t1), vec in zip(emb.audio_segments, emb.audio_vectors, strict=True):
        points.append(
            _record(pid(f"a{k}"), vec, replace(audio, segment=k, t_start=t0, t_end=t1, pooled=False))
        )
    points.append(_record(pid(f"{POOLED}-audio"), emb.audio_pooled, _whole(audio, emb.duration)))
    return points


def _whole(payload: PointPayload, duration: float) -> PointPayload:
    return replace(payload, segment=0, t_start=0.0, t_end=duration, pooled=True)


def _record(
    pid: str, vector: np.ndarray, payload: PointPayload, frames: np.ndarray | None = None
) -> PointRecord:
    return PointRecord(pid, vector, payload.to_dict(), frames=frames)

"""Points for time-based media: audio windows and video segments, plus a pooled point per file.

Audio: one point per overlapping window of the audio tower, and a pooled point for the whole clip.
Video: fixed-length segments; each segment's visual point carries its frame vectors (multivector,
re-scored with MAX_SIM) and their normalised mean as its dense vector, and its audio point the audio
tower's vector for that stretch of the track. One pooled point per track covers the whole video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from encoders.decode import DecodedAudio, DecodedVideo
from encoders.encoder import Encoder
from encoders.vectors import mean_unit
from indexer.schema import PointRecord, point_id

AUDIO = "audio"
VISUAL = "visual"
POOLED = "pooled"  # the sentinel segment key: present once a media file is fully indexed


@dataclass(frozen=True)
class VideoLayout:
    segment_seconds: float = 5.0


def audio_points(key: str, base: dict[str, Any], audio: DecodedAudio, encoder: Encoder) -> list[PointRecord]:
    emb = encoder.embed_audio(audio.samples)
    n = len(emb.windows)
    points = [
        PointRecord(
            point_id(key, f"a{k}"),
            emb.vectors[k],
            {
                **base,
                "track": AUDIO,
                "segment": k,
                "segments": n,
                "t_start": t0,
                "t_end": t1,
                "pooled": False,
            },
        )
        for k, (t0, t1) in enumerate(emb.windows)
    ]
    pooled = {**base, "track": AUDIO, "segment": 0, "segments": n, "t_start": 0.0, "t_end": audio.duration}
    points.insert(0, PointRecord(point_id(key, POOLED), emb.pooled, {**pooled, "pooled": True}))
    return points


def video_points(
    key: str, base: dict[str, Any], video: DecodedVideo, encoder: Encoder, layout: VideoLayout
) -> tuple[list[PointRecord], str | None]:
    """The video's points, and a note when its audio track could not be used (else None)."""
    frame_vecs = encoder.embed_frames(video.frames)
    seg = layout.segment_seconds
    n_segments = max(1, math.ceil(video.duration / seg))
    base = {**base, "duration": video.duration}
    points = [
        PointRecord(
            point_id(key, POOLED),
            mean_unit(frame_vecs),
            {
                **base,
                "track": VISUAL,
                "segment": 0,
                "segments": n_segments,
                "t_start": 0.0,
                "t_end": video.duration,
            }
            | {"pooled": True},
        )
    ]
    for k in range(n_segments):
        t0, t1 = k * seg, min((k + 1) * seg, video.duration)
        in_seg = (video.times >= t0) & (video.times < t1)
        if not in_seg.any():  # frames were spread thinner than one per segment (frame cap)
            continue
        frames = frame_vecs[in_seg]
        payload = {**base, "track": VISUAL, "segment": k, "segments": n_segments, "t_start": t0, "t_end": t1}
        payload |= {"pooled": False, "frame_times": [round(float(t), 3) for t in video.times[in_seg]]}
        points.append(PointRecord(point_id(key, f"v{k}"), mean_unit(frames), payload, frames=frames))

    if video.audio is None:
        return points, "no audio track"
    if not encoder.has_audio:
        return points, "bundle has no audio tower; audio track not indexed"
    samples, rate = video.audio.samples, video.audio.sample_rate
    clips, bounds = [], []
    for k in range(n_segments):
        t0, t1 = k * seg, min((k + 1) * seg, video.duration)
        clip = samples[int(t0 * rate) : int(t1 * rate)]
        if len(clip) >= rate // 10:  # under 0.1 s of sound carries nothing to embed
            clips.append(clip)
            bounds.append((k, t0, t1))
    vectors = encoder.embed_audio_clips(clips) if clips else np.zeros((0, encoder.dim), dtype=np.float32)
    for (k, t0, t1), vec in zip(bounds, vectors, strict=True):
        payload = {**base, "track": AUDIO, "segment": k, "segments": n_segments, "t_start": t0, "t_end": t1}
        points.append(PointRecord(point_id(key, f"a{k}"), vec, payload | {"pooled": False}))
    pooled_audio = encoder.embed_audio(samples).pooled
    payload = {
        **base,
        "track": AUDIO,
        "segment": 0,
        "segments": n_segments,
        "t_start": 0.0,
        "t_end": video.duration,
    }
    points.append(PointRecord(point_id(key, f"{POOLED}-audio"), pooled_audio, payload | {"pooled": True}))
    return points, None

"""Audio and video ingest throughput against the bare encoders on the same decoded inputs.

Generates a small library (tone clips as wav, videos as mp4 with an audio track), then measures,
in the same run:

- ingest: the full path (isolated decode -> encode -> write to a fresh embedded store), in media
  seconds ingested per wall-clock second;
- encoders: only the encoder calls the ingest makes (frames through the image tower, windows and
  segments through the audio tower) on inputs decoded beforehand: the ceiling for ingest.

Ingest and encoder runs alternate, --repeats of each; rates are medians and `ratio` is the median
of the per-repeat (ingest rate / encoder rate). Prints one JSON object.

    .venv/bin/python bench/ingest_media.py [--audio-files 8] [--videos 4] [--seconds 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders.bundle import load_bundle
from encoders.decode import MediaDecoder
from encoders.embed import Decoded, Embedder
from encoders.encoder import Encoder
from encoders.modality import Modality
from indexer.edge_store import EdgeStore
from indexer.inputs import ItemInput
from indexer.items import ItemIndexer
from indexer.schema import CollectionSchema
from tests.media import make_image, tone, write_audio, write_video


def make_library(root: Path, audio_files: int, videos: int, seconds: int) -> tuple[list[Path], list[Path]]:
    audio = [write_audio(root / f"a{i}.wav", tone(i, float(seconds), seed=i)) for i in range(audio_files)]
    video = []
    for i in range(videos):
        frames = [make_image(1000 * i + k, size=(320, 240)) for k in range(seconds) for _ in range(2)]
        video.append(write_video(root / f"v{i}.mp4", frames, fps=2, audio=tone(10 + i, float(seconds))))
    return audio, video


def time_ingest(encoder: Encoder, files: list[Path], modality: Modality, workdir: Path) -> float:
    store = EdgeStore(
        Path(tempfile.mkdtemp(dir=workdir)), CollectionSchema(encoder.bundle.bundle_id, encoder.dim)
    )
    embedder = Embedder(encoder)
    indexer = ItemIndexer(embedder, store)
    try:
        # Start the decoder workers (each imports decord, PyAV, torchaudio) outside the timed region.
        embedder.decoder.start()
        warm = embedder.decoder.audio if modality == Modality.AUDIO else embedder.decoder.video
        warm(files[0], name="warm-up")
        start = time.perf_counter()
        outcomes = indexer.index([ItemInput(modality, f, source=str(f)) for f in files])
        elapsed = time.perf_counter() - start
    finally:
        embedder.close()
        store.close()
    failed = [o.error for o in outcomes if o.error]
    if failed:
        raise RuntimeError(f"ingest failed: {failed}")
    return elapsed


def encoder_work(embedder: Embedder, decoded: Sequence[Decoded]) -> Callable[[], None]:
    """The ceiling: the embedding path's model work on already-decoded media, nothing else."""

    def run() -> None:
        embedder.embed_decoded(decoded)

    return run


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="tiny")
    ap.add_argument("--audio-files", type=int, default=8)
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=20, help="length of each generated clip")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    encoder = Encoder(load_bundle(args.bundle))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        audio_files, video_files = make_library(work / "lib", args.audio_files, args.videos, args.seconds)
        decoder = MediaDecoder(sample_rate=encoder.audio_sample_rate)
        try:
            audio_decoded = [decoder.audio(f, name=f.name) for f in audio_files]
            video_decoded = [decoder.video(f, name=f.name) for f in video_files]
        finally:
            decoder.close()
        audio_total = sum(a.duration for a in audio_decoded)
        video_total = sum(v.duration for v in video_decoded)
        embedder = Embedder(encoder)
        results = {}
        for name, files, modality, total, work_fn in [
            ("audio", audio_files, Modality.AUDIO, audio_total, encoder_work(embedder, audio_decoded)),
            (
                "video",
                video_files,
                Modality.VIDEO,
                video_total,
                encoder_work(embedder, video_decoded),
            ),
        ]:
            work_fn()  # warm-up
            # Alternate the two measurements so both see the same machine load; report medians.
            ingest_runs, bare_runs = [], []
            for _ in range(args.repeats):
                ingest_runs.append(time_ingest(encoder, files, modality, work))
                bare_runs.append(timed(work_fn))
            ingest, bare = statistics.median(ingest_runs), statistics.median(bare_runs)
            ratios = [b / i for b, i in zip(bare_runs, ingest_runs, strict=True)]
            results[name] = {
                "files": len(files),
                "media_seconds": round(total, 2),
                "ingest_seconds_per_s": round(total / ingest, 2),
                "encoders_seconds_per_s": round(total / bare, 2),
                "ratio": round(statistics.median(ratios), 3),
            }
    print(
        json.dumps(
            {
                "bundle": args.bundle,
                "bundle_id": encoder.bundle.bundle_id,
                "device": str(encoder.bundle.device),
                "repeats": args.repeats,
                "audio_seconds_per_s": results["audio"]["ingest_seconds_per_s"],
                "video_seconds_per_s": results["video"]["ingest_seconds_per_s"],
                **results,
            }
        )
    )


if __name__ == "__main__":
    main()

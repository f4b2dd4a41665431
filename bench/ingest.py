"""Bulk ingest throughput against its ceiling, locally and through the server.

Two generated libraries:
- images: photo-like 640x480 JPEGs, embedded by open_clip ViT-B-32 with random weights;
- mixed: JPEGs, texts (short and long), wav clips and mp4 videos with sound, tiny bundle.

For each, measured in the same run on the same files:
- decode_per_s: the decode stage's own work (bench/ingest_decode.py) in a pool of one process
  per core, results thrown away;
- encode_per_s: the encode stage's model work on inputs decoded beforehand, in the pipeline's
  batch size;
- ceiling_per_s: on CPU, where decode and encode share the cores, 1 / (1/decode + 1/encode); on
  CUDA the smaller of the two;
- items_per_s: `IngestPipeline.run` into a fresh embedded store (journal and report included);
- remote_items_per_s: the same files through a launched `mmsearch serve` and the remote client;
- naive_items_per_s: one file at a time through the same pipeline (`run([file])` per file, on a
  sample), and speedup_vs_naive = items_per_s / naive_items_per_s;
- ray_items_per_s: the same files through the Ray ingest (`mmsearch ingest --ray`'s stages) on a
  local Ray instance of every core (bench/ingest_ray.py), the marginal rate that leaves out the
  job's fixed start (ray_startup_s: the actor's torch import and model load), as items_per_s
  leaves out loading the model; ray_run_s the whole run; ray_ratio_to_local =
  ray_items_per_s / items_per_s (goal >= 0.8: Ray's overhead on one node stays small).
Each rate is a median over --repeats. Prints one JSON object on the last line.

    .venv/bin/python bench/ingest.py [--images 2000] [--mixed-images 200] [--texts 200] \
        [--audio 30] [--videos 12] [--naive 100] [--repeats 1] [--skip-remote] [--skip-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

# As the CLI does (mmsearch.cli.main): OpenMP threads sleep rather than spin at barriers, which
# on shared cores (decoder workers beside the model) makes the model several times faster.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import av  # noqa: E402
import ingest_decode  # noqa: E402
import ingest_ray  # noqa: E402
import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from encoders.bundle import BundleSpec, ModelBundle, compute_bundle_id, load_bundle, save_bundle  # noqa: E402
from encoders.decode import MediaDecoder  # noqa: E402
from encoders.embed import Embedder  # noqa: E402
from encoders.encoder import Encoder  # noqa: E402
from indexer.edge_store import EdgeStore  # noqa: E402
from indexer.journal import Journal  # noqa: E402
from indexer.pipeline import IngestPipeline, PipelineOptions  # noqa: E402
from indexer.quarantine import Quarantine  # noqa: E402
from indexer.schema import CollectionSchema  # noqa: E402
from indexer.sources import SourceFile  # noqa: E402
from indexer.walk import walk_sources  # noqa: E402
from mmsearch.client import MMSearchClient  # noqa: E402
from mmsearch.launch import launch_server  # noqa: E402
from tests.media import TEXTS, tone, write_wav  # noqa: E402

CORES = os.cpu_count() or 1


# -- libraries -------------------------------------------------------------------------------


def photo(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """Photo-like: smooth colour fields, a few hard edges, sensor-like noise (JPEG ~50-90 KB)."""
    rng = np.random.default_rng(seed)
    w, h = size
    field = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize(
        size, Image.Resampling.BICUBIC
    )
    pixels = np.asarray(field).astype(np.float32)
    for _ in range(5):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        pixels[y0 : y0 + int(rng.integers(20, 200)), x0 : x0 + int(rng.integers(20, 200))] = (
            rng.random(3) * 255
        )
    pixels += rng.normal(0, 8, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_photos(root: Path, n: int, seed: int = 0) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo(seed + i).save(root / f"p{i:05d}.jpg", quality=90)


def write_clip_video(
    path: Path, seed: int, seconds: int = 10, fps: int = 24, size: tuple[int, int] = (640, 360)
) -> None:
    """An h264 (yuv420p, default quality) mp4 with an AAC track: a camera-like file."""
    rng = np.random.default_rng(seed)
    base = np.asarray(photo(seed, size)).astype(np.int16)
    with av.open(str(path), "w") as container:
        vs: Any = container.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        vs.options = {"preset": "veryfast"}
        audio: Any = container.add_stream("aac", rate=16000, layout="mono")
        for k in range(seconds * fps):
            shifted = np.roll(base, shift=(k * 2, k * 3), axis=(0, 1)) + rng.integers(-6, 7, base.shape)
            frame = av.VideoFrame.from_ndarray(np.clip(shifted, 0, 255).astype(np.uint8), format="rgb24")
            for packet in vs.encode(frame):
                container.mux(packet)
        for packet in vs.encode(None):
            container.mux(packet)
        samples = tone(seed, float(seconds))
        sound = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        sound.sample_rate, sound.pts = 16000, 0
        resampler = av.AudioResampler(format=audio.codec_context.format, layout="mono", rate=16000)
        for chunk in resampler.resample(sound) + resampler.resample(None):
            for packet in audio.encode(chunk):
                container.mux(packet)
        for packet in audio.encode(None):
            container.mux(packet)


def write_mixed(root: Path, images: int, texts: int, audio: int, videos: int) -> None:
    write_photos(root / "images", images, seed=100_000)
    (root / "texts").mkdir(parents=True)
    for i in range(texts):
        body = TEXTS[i % len(TEXTS)] + f" (note {i})"
        if i % 10 == 0:  # one in ten is a long document of many chunks
            body = " ".join(
                f"Paragraph {k} of document {i} says {TEXTS[k % len(TEXTS)]}." for k in range(150)
            )
        (root / "texts" / f"t{i:05d}.txt").write_text(body)
    for i in range(audio):
        write_wav(root / "audio" / f"a{i:04d}.wav", tone(i, 10.0, seed=i))
    (root / "videos").mkdir()
    for i in range(videos):
        write_clip_video(root / "videos" / f"v{i:04d}.mp4", seed=i)


def random_bundle(model: str, out: Path) -> Path:
    """An open_clip model with random weights as a bundle directory (nothing is downloaded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=None, device="cpu")
    net.eval()
    cfg = dict(open_clip.get_model_config(model) or {})
    bundle = ModelBundle(
        spec=BundleSpec(name=f"random:{model}", model_name=model),
        model=net,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(model),
        model_cfg=cfg,
        embed_dim=int(cfg["embed_dim"]),
        context_length=77,
        bundle_id=compute_bundle_id(net, cfg, dict(open_clip.get_model_preprocess_cfg(net))),
        device=torch.device("cpu"),
    )
    return save_bundle(bundle, out)


# -- measurements ----------------------------------------------------------------------------


@dataclass
class Library:
    name: str
    root: Path
    bundle: str  # a bundle name or directory, for load_bundle and the server
    files: list[SourceFile]


def bare_decode(lib: Library, embedder: Embedder, target: Any) -> float:
    """Files per second of the decode stage's work alone, one process per core."""
    d = embedder.decoder
    video = (d.fps, d.max_frames, d.sample_rate, d.short_side)
    enc = embedder.encoder
    init_args = (target, video, enc.bundle.spec.model_name, enc.max_chunk_tokens)
    # Biggest files first, one per task: the pool's capacity, not a tail of videos on one core.
    jobs = [(f.modality.value, str(f.path)) for f in sorted(lib.files, key=lambda f: -f.size)]
    with ProcessPoolExecutor(
        CORES, mp_context=get_context("spawn"), initializer=ingest_decode.init, initargs=init_args
    ) as pool:
        list(pool.map(ingest_decode.ready, range(CORES * 4)))  # every process started and initialised
        start = time.perf_counter()
        list(pool.map(ingest_decode.decode_one, jobs))
        return len(jobs) / (time.perf_counter() - start)


def bare_encode(lib: Library, pipeline: IngestPipeline) -> float:
    """Files per second of the encode stage's model work on inputs decoded beforehand."""
    from indexer.ingest_work import Work, identify, read_source

    works = []
    for src in lib.files:
        w = Work(src)
        read_source(w, pipeline.limits)
        identify(w, pipeline.namespace, pipeline.bundle_id)
        pipeline.decoders.decode(w)
        works.append(w)
    size = pipeline.options.batch_size
    batches, batch, units = [], [], 0
    for w in works:
        batch.append(w)
        units += w.units
        if units >= size:
            batches.append(batch)
            batch, units = [], 0
    if batch:
        batches.append(batch)
    start = time.perf_counter()
    for b in batches:
        pipeline.encoder.encode(b)
    elapsed = time.perf_counter() - start
    failed = [w.result for w in works if w.embedding is None]
    if failed:
        raise RuntimeError(f"bare encode failed: {failed[:3]}")
    return len(works) / elapsed


def local_run(
    lib: Library, embedder: Embedder, options: PipelineOptions, work: Path, *, naive: int = 0
) -> float:
    """Files per second through the pipeline into a fresh store; with `naive`, one file per
    run() call over the first `naive` files."""
    enc = embedder.encoder
    data = Path(tempfile.mkdtemp(dir=work))
    store = EdgeStore(data, CollectionSchema(enc.bundle.bundle_id, enc.dim))
    journal = Journal(data / "journal.sqlite")
    try:
        with IngestPipeline(
            embedder, store, options, journal=journal, quarantine=Quarantine(data / "q.jsonl")
        ) as p:
            p.decoder.start()
            files = lib.files[:naive] if naive else lib.files
            start = time.perf_counter()
            if naive:
                results = [p.run([f]) for f in files]
                indexed = sum(r.indexed for r in results)
            else:
                indexed = p.run(lib.files).indexed
            elapsed = time.perf_counter() - start
    finally:
        journal.close()
        store.close()
    if indexed != len(files):
        raise RuntimeError(f"{lib.name}: indexed {indexed} of {len(files)}")
    return len(files) / elapsed


def remote_run(lib: Library, work: Path) -> float | None:
    """Files per second through a launched server and the remote ingest client."""
    try:
        from mmsearch.remote_ingest import ingest_remote
    except ImportError:
        return None
    server = launch_server(Path(tempfile.mkdtemp(dir=work)), bundle=lib.bundle, cwd=ROOT, timeout=300)
    try:
        with MMSearchClient(server.target, timeout=600) as client:
            client.wait_ready(120)
            warm = work / f"warm-{lib.name}"
            if not warm.exists():
                warm.mkdir()
                photo(999_999).save(warm / "warm.jpg")
            ingest_remote(client, warm)
            start = time.perf_counter()
            summary = ingest_remote(client, lib.root)
            elapsed = time.perf_counter() - start
    finally:
        server.stop()
    if summary.indexed != len(lib.files):
        raise RuntimeError(
            f"{lib.name} (remote): indexed {summary.indexed} of {len(lib.files)}: {summary.errors[:3]}"
        )
    return len(lib.files) / elapsed


def ray_run(lib: Library, args: argparse.Namespace, work: Path, encoder: Encoder) -> ingest_ray.RayFigures:
    """The Ray ingest's figures; its warm-up and short runs take every 20th file."""
    warm = work / f"ray-warm-{lib.name}"
    if not warm.exists():
        warm.mkdir()
        for f in lib.files[::20]:
            assert f.path is not None
            shutil.copy(f.path, warm / f.path.name)
    schema = CollectionSchema(encoder.bundle.bundle_id, encoder.dim)
    options = PipelineOptions(batch_size=args.batch_size)
    device = "cpu" if args.device == "cpu" else None
    return ingest_ray.ray_run(
        lib.name, lib.files, lib.root, lib.bundle, schema, options, work, device=device, warm=warm
    )


def measure(lib: Library, args: argparse.Namespace, work: Path, naive: int) -> dict[str, Any]:
    encoder = Encoder(load_bundle(lib.bundle, "cpu" if args.device == "cpu" else None))
    embedder = Embedder(encoder, MediaDecoder(workers=CORES, sample_rate=encoder.decode_sample_rate))
    options = PipelineOptions(decode_workers=0, batch_size=args.batch_size)
    cuda = encoder.bundle.device.type == "cuda"
    runs: dict[str, list[float]] = {
        k: [] for k in ("decode", "encode", "local", "remote", "naive", "ray", "ray_startup", "ray_run")
    }
    try:
        probe = EdgeStore(
            Path(tempfile.mkdtemp(dir=work)), CollectionSchema(encoder.bundle.bundle_id, encoder.dim)
        )
        with IngestPipeline(embedder, probe, options) as pipeline:
            target = pipeline.decoders.target
            warm = lib.files[: min(8, len(lib.files))]
            bare_encode(replace(lib, files=warm), pipeline)  # warm-up
            for _ in range(args.repeats):
                runs["decode"].append(bare_decode(lib, embedder, target))
                runs["encode"].append(bare_encode(lib, pipeline))
                runs["local"].append(local_run(lib, embedder, options, work))
                runs["naive"].append(local_run(lib, embedder, options, work, naive=naive))
                if not args.skip_remote and (rate := remote_run(lib, work)) is not None:
                    runs["remote"].append(rate)
                if args.ray is not None:
                    ray = ray_run(lib, args, work, encoder)
                    runs["ray"].append(ray.items_per_s)
                    runs["ray_startup"].append(ray.startup_s)
                    runs["ray_run"].append(ray.run_s)
        probe.close()
    finally:
        embedder.close()
    med = {k: statistics.median(v) if v else None for k, v in runs.items()}
    decode, encode = med["decode"], med["encode"]
    assert decode is not None and encode is not None and med["local"] is not None and med["naive"] is not None
    ceiling = min(decode, encode) if cuda else 1 / (1 / decode + 1 / encode)
    out: dict[str, Any] = {
        "files": len(lib.files),
        "bundle": encoder.bundle.spec.name if lib.name == "mixed" else "open_clip ViT-B-32, random weights",
        "items_per_s": round(med["local"], 2),
        "remote_items_per_s": None if med["remote"] is None else round(med["remote"], 2),
        "decode_per_s": round(decode, 2),
        "encode_per_s": round(encode, 2),
        "ceiling_per_s": round(ceiling, 2),
        "ratio_to_ceiling": round(med["local"] / ceiling, 3),
        "remote_ratio_to_ceiling": None if med["remote"] is None else round(med["remote"] / ceiling, 3),
        "naive_items_per_s": round(med["naive"], 2),
        "naive_sample": naive,
        "speedup_vs_naive": round(med["local"] / med["naive"], 2),
        "ray_items_per_s": None if med["ray"] is None else round(med["ray"], 2),
        "ray_ratio_to_local": None if med["ray"] is None else round(med["ray"] / med["local"], 3),
        "ray_startup_s": None if med["ray_startup"] is None else round(med["ray_startup"], 1),
        "ray_run_s": None if med["ray_run"] is None else round(med["ray_run"], 1),
        "batch_size": args.batch_size,
        "decode_workers": CORES,
        "repeats": args.repeats,
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000, help="JPEGs of the images library")
    ap.add_argument("--model", default="ViT-B-32", help="open_clip model of the images library")
    ap.add_argument("--mixed-images", type=int, default=200)
    ap.add_argument("--texts", type=int, default=200)
    ap.add_argument("--audio", type=int, default=30)
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--naive", type=int, default=100, help="files of the naive one-at-a-time sample")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present) or cpu")
    ap.add_argument("--only", choices=("images", "mixed"), help="measure one library")
    ap.add_argument("--skip-remote", action="store_true")
    ap.add_argument("--skip-ray", action="store_true", help="leave out the Ray ingest figures")
    args = ap.parse_args()
    args.ray = None if args.skip_ray else ingest_ray.start(CORES)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "images"):
            write_photos(work / "images", args.images)
            bundle = random_bundle(args.model, work / "bundle-images")
            lib = Library("images", work / "images", str(bundle), list(walk_sources(work / "images")))
            results["images"] = measure(lib, args, work, min(args.naive, args.images))
        if args.only in (None, "mixed"):
            write_mixed(work / "mixed", args.mixed_images, args.texts, args.audio, args.videos)
            lib = Library("mixed", work / "mixed", "tiny", list(walk_sources(work / "mixed")))
            results["mixed"] = measure(lib, args, work, len(lib.files))
    device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    print(json.dumps({"libraries": results, "device": device, "cores": CORES}))


if __name__ == "__main__":
    main()

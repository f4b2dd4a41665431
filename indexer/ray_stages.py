"""The ingest pipeline's decode and embed stages as Ray Data `map_batches` callables.

Both run the pipeline's own code (indexer.ingest_steps.prepare with its Decoders; its
BatchEncoder), so an item decoded and embedded on a Ray worker becomes the very points the local
pipeline writes. Items travel between stages as pickled `Work`s in one binary column: a typed
object, whatever it holds (fitted pixels, video frames, finished point records).

- DecodeStage: a plain function for Ray tasks (CPU). Each task is handed a fresh copy, so what
  is slow to build (the bundle's tokenizer and audio settings, the decoder's worker processes)
  is kept per worker process and reused by the next task.
- EmbedStage: a callable class for Ray's actor pool: one model per actor, on the actor's GPU
  when it was given one.

Nothing here imports Ray: indexer.ray_ingest builds the dataset.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from encoders.embed import Embedder
from encoders.errors import BundleError
from indexer.ingest_decode import Decoders
from indexer.ingest_encode import BatchEncoder
from indexer.ingest_flow import IngestAborted
from indexer.ingest_steps import prepare
from indexer.ingest_work import ReadLimits, Skip, Work
from indexer.pipeline import PipelineOptions, decode_stage, decoder_like, encode_stage
from indexer.sources import ItemResult, ItemStatus, Stage

log = logging.getLogger(__name__)
COLUMN = "work"
# Builds the ingest Embedder on a worker: device None picks the worker's GPU when it has one.
# Pickled to every worker, so a module-level function or a dataclass instance, not a lambda.
EmbedderFactory = Callable[[str | None], Embedder]


@dataclass(frozen=True)
class StageConfig:
    """What every worker needs to run a stage as the driver's pipeline would."""

    make_embedder: EmbedderFactory
    options: PipelineOptions
    namespace: str
    bundle_id: str
    device: str | None = None  # the embed actors' device (None: their GPU, else the CPU)
    device_jpeg: bool = False  # JPEGs are decoded on the actors' GPUs
    decode_workers: int = 1  # decoder worker processes per decode task process
    # torch threads of an embed actor on the CPU; 0: every core of its node, as the local
    # pipeline's model takes (Ray would give it one thread per CPU it reserves)
    cpu_threads: int = 0


def pack(works: Sequence[Work]) -> dict[str, np.ndarray]:
    column = np.empty(len(works), dtype=object)
    column[:] = [pickle.dumps(w, protocol=pickle.HIGHEST_PROTOCOL) for w in works]
    return {COLUMN: column}


def unpack(batch: Mapping[str, Any]) -> list[Work]:
    return [pickle.loads(blob) for blob in batch[COLUMN]]


# -- decode, in Ray tasks -------------------------------------------------------------------


@dataclass
class _Decoding:
    config: StageConfig
    embedder: Embedder
    decoders: Decoders
    limits: ReadLimits

    def close(self) -> None:
        self.decoders.decoder.close()
        self.embedder.close()


_decoding: _Decoding | None = None
_decoding_lock = threading.Lock()


def _decoding_for(config: StageConfig) -> _Decoding:
    """This process's decode stage for `config`, built by its first task."""
    global _decoding
    with _decoding_lock:
        if _decoding is not None and _decoding.config == config:
            return _decoding
        if _decoding is not None:  # a worker reused for another ingest
            _decoding.close()
            _decoding = None
        opts = config.options
        # The decode stage needs the bundle's tokenizer (text chunks), its audio settings and
        # image preprocessing, not a GPU: the model stays on the CPU here.
        embedder = config.make_embedder("cpu")
        decoder = decoder_like(embedder.decoder, opts, workers=config.decode_workers)
        decoders = decode_stage(embedder, decoder, opts, device_jpeg=config.device_jpeg)
        limits = ReadLimits(opts.max_file_bytes, opts.max_text_bytes)
        _decoding = _Decoding(config, embedder, decoders, limits)
        return _decoding


def release_decoding() -> None:
    """Stop this process's decode stage (its decoder worker processes), if it has one."""
    global _decoding
    with _decoding_lock:
        if _decoding is not None:
            _decoding.close()
            _decoding = None


class DecodeStage:
    """Read, hash and decode a batch of items (Ray task function; items with an outcome pass)."""

    def __init__(self, config: StageConfig) -> None:
        self.config = config

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        stage = _decoding_for(self.config)
        works = unpack(batch)
        todo = [w for w in works if w.result is None]
        # Reading and hashing overlap the worker processes' decoding, as in the local pipeline.
        threads = 2 * stage.decoders.decoder.workers
        if len(todo) > 1 and threads > 1:
            with ThreadPoolExecutor(threads, thread_name_prefix="ray-decode") as pool:
                list(pool.map(lambda w: self._one(stage, w), todo))
        else:
            for w in todo:
                self._one(stage, w)
        return pack(works)

    def _one(self, stage: _Decoding, w: Work) -> None:
        try:
            prepare(
                w,
                limits=stage.limits,
                namespace=self.config.namespace,
                bundle_id=self.config.bundle_id,
                decoders=stage.decoders,
            )
        except Skip as skip:
            w.finish(skip.result)
        except (IngestAborted, MemoryError):
            raise
        except Exception as exc:  # a bug shown by one file fails that file, not the run
            log.exception("ingest of %s failed unexpectedly", w.src.source)
            w.finish(ItemResult(ItemStatus.FAILED, f"{type(exc).__name__}: {exc}", Stage.DECODE))


# -- embed, in Ray actors -------------------------------------------------------------------


class EmbedStage:
    """Embed decoded items into point records (Ray actor: one model per actor)."""

    def __init__(self, config: StageConfig) -> None:
        self.config = config
        self.embedder = config.make_embedder(config.device)
        bundle = self.embedder.encoder.bundle
        if bundle.device.type == "cpu":
            torch.set_num_threads(config.cpu_threads or os.cpu_count() or 1)
        if bundle.bundle_id != config.bundle_id:
            # The same bundle name can mean other weights on another machine (a stale copy).
            raise BundleError(
                f"bundle {bundle.spec.name} is {bundle.bundle_id} on this Ray worker but "
                f"{config.bundle_id} on the driver: give every node the same bundle"
            )
        decoders = decode_stage(self.embedder, self.embedder.decoder, config.options)
        self.encoder: BatchEncoder = encode_stage(self.embedder, decoders, config.options, config.namespace)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        works = unpack(batch)
        todo = [w for w in works if w.result is None]
        if todo:
            self.encoder.encode(todo)
        for w in todo:
            # The payloads are built here, on the actor, not on the driver that writes them.
            if w.embedding is not None:
                self.encoder.records(w)
            elif w.result is None:  # defensive: every item leaves embedded or finished
                w.finish(ItemResult(ItemStatus.FAILED, "not embedded", Stage.EMBED))
        return pack(works)

"""The bulk ingest pipeline: sources -> skip unchanged -> read and hash -> decode -> encode -> write.

    feeder thread        journal skip by (source, size, mtime), before reading a byte
    decode threads       read + hash, skip by content (journal, then the store's sentinel point),
                         decode in the isolated worker processes (ingest_decode)
    encoder thread       large cross-file batches through the towers (ingest_encode)
    writer thread        batched upserts, then the journal, then the reports (ingest_write)

The stages overlap, joined by bounded hand-offs: at most `in_flight` items are anywhere between
the feeder and the end of the writer, and decoded media are held to `decoded_budget` bytes, so
memory stays flat on a library of any size. A file's failure is its own (quarantined or failed,
reported, the run goes on); only a store, journal or report that cannot be written stops the run
(IngestAborted), and what was journaled until then stays valid.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from encoders.decode import MediaDecoder
from encoders.embed import Embedder
from encoders.media import MAX_IMAGE_PIXELS
from encoders.pixel_batch import PixelEncoder
from encoders.replicas import encode_devices, replicate
from indexer.ingest_decode import Decoders
from indexer.ingest_encode import BatchEncoder
from indexer.ingest_flow import Budget, Flow, IngestAborted
from indexer.ingest_steps import (
    journal_call,
    prepare,
    purge_stale,
    retire_missing,
    skip_by_stat,
    start_journal,
)
from indexer.ingest_work import (
    ReadLimits,
    Skip,
    Work,
)
from indexer.ingest_write import OnItem, Writer
from indexer.journal import Journal
from indexer.manifest import IndexField, Rejected
from indexer.progress import IngestProgress, IngestSummary, Tally
from indexer.quarantine import Quarantine
from indexer.schema import DEFAULT_NAMESPACE
from indexer.sources import ItemResult, ItemStatus, SourceFile, Stage
from indexer.store import VectorStore

__all__ = [
    "IngestAborted",
    "IngestPipeline",
    "IngestProgress",
    "IngestSummary",
    "ItemResult",
    "ItemStatus",
    "PipelineOptions",
    "SourceFile",
    "Stage",
]

log = logging.getLogger(__name__)
IMAGE_DECODE_MODES = ("auto", "workers", "device")
_SEEN_BATCH = 1000


@dataclass(frozen=True)
class PipelineOptions:
    decode_workers: int = 0  # 0: the embedder's decoder pool; N: a pool of N workers of its own
    batch_size: int = 64  # images, frames, chunks or windows per forward pass
    write_batch: int = 512  # points per store upsert
    in_flight: int = 0  # items between feeder and writer; 0: 4 x batch_size (at least 64)
    decoded_budget: int = 1024**3  # bytes of decoded media waiting for the encoder
    batch_wait: float = 0.05  # seconds the encoder waits to fill a batch while decodes run
    decode_timeout: float = 60.0  # seconds per file in a worker (own pool; images always)
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_file_bytes: int = 256 * 1024**2  # images are read whole
    max_text_bytes: int = 16 * 1024**2
    jpeg_draft: bool = True  # decode JPEGs at a reduced DCT scale that still covers the model input
    image_decode: str = "auto"  # auto: JPEGs on the GPU when the model is on CUDA; workers; device
    index_fields: tuple[IndexField, ...] = ()
    max_payload_bytes: int | None = None
    devices: tuple[str, ...] = ()  # encode on these devices; (): every GPU, or the model's device
    retry_quarantined: bool = False  # decode again files set aside by an earlier run, unchanged since

    def __post_init__(self) -> None:
        for name in ("batch_size", "write_batch", "decoded_budget", "max_image_pixels", "max_file_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.decode_workers < 0 or self.in_flight < 0:
            raise ValueError("decode_workers and in_flight must be >= 0")
        if not self.decode_timeout > 0 or self.batch_wait < 0:
            raise ValueError("decode_timeout must be > 0 and batch_wait >= 0")
        if self.image_decode not in IMAGE_DECODE_MODES:
            raise ValueError(f"image_decode must be one of {IMAGE_DECODE_MODES}, got {self.image_decode!r}")

    @property
    def slots(self) -> int:
        return self.in_flight or max(64, 4 * self.batch_size)


class IngestPipeline:
    """Ingests sources into one store with one embedder, in one id namespace."""

    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        options: PipelineOptions | None = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        journal: Journal | None = None,
        quarantine: Quarantine | None = None,
    ) -> None:
        self.options = options = options or PipelineOptions()
        self.bundle_id = embedder.encoder.bundle.bundle_id
        if self.bundle_id != store.schema.bundle_id:
            raise ValueError("encoder and store belong to different bundles")
        if journal is not None:
            if journal.namespace != namespace:
                raise ValueError(f"journal is for namespace {journal.namespace!r}, not {namespace!r}")
            if journal.bundle_id not in (None, self.bundle_id):
                raise ValueError(f"journal is bound to bundle {journal.bundle_id}, not {self.bundle_id}")
            journal.bundle_id = self.bundle_id
        self.embedder, self.store, self.namespace = embedder, store, namespace
        self.journal, self.quarantine = journal, quarantine
        self._own_decoder = decoder_like(embedder.decoder, options) if options.decode_workers else None
        self.decoder = self._own_decoder or embedder.decoder
        self.decoders = decode_stage(embedder, self.decoder, options)
        # One encoder per device (every GPU when the model is on CUDA), each on its own thread.
        self.encoders = [
            encode_stage(replica, self.decoders, options, namespace)
            for replica in replicate(embedder, encode_devices(embedder, options.devices))
        ]
        self.encoder = self.encoders[0]
        self.limits = ReadLimits(options.max_file_bytes, options.max_text_bytes)
        self._store_lock = threading.Lock()
        self._tally: Tally | None = None
        self._total: int | None = None
        for f in options.index_fields:
            store.create_field_index(f.key, f.kind.value)

    # -- the run --------------------------------------------------------------------------

    def run(
        self,
        sources: Iterable[SourceFile | Rejected],
        *,
        on_item: OnItem | None = None,
        progress: Callable[[IngestProgress], None] | None = None,
        check: Callable[[], None] | None = None,
        sync_prefix: str | None = None,
        total: int | None = None,
    ) -> IngestSummary:
        """Ingest `sources` (consumed on a feeder thread; it may block). Returns the summary;
        raises IngestAborted when the store, journal or report cannot be written, or whatever
        `check` or the sources raise (the stages are stopped first)."""
        if sync_prefix is not None and self.journal is None:
            raise ValueError("sync needs a journal: it says which sources were indexed before")
        tally = self._tally = Tally()
        tally.total = total if total is not None else self._total
        writer = Writer(
            self.store,
            self._store_lock,
            self.journal,
            self.quarantine,
            tally,
            on_item=on_item,
            progress=progress,
        )
        self._start()
        if sync_prefix is not None and self.journal is not None:
            self.journal.begin_seen()
        flow = Flow(self.options.slots)
        budget = Budget(self.options.decoded_budget)
        stages = _Stages(self, flow, budget, writer, check, track_seen=sync_prefix is not None)
        stages.run(iter(sources))
        summary = tally.summary
        if sync_prefix is not None:
            summary.removed = self._retire_missing(sync_prefix, stages.unlisted)
        self._purge()
        writer.tick(force=True)
        if self.quarantine is not None and self.quarantine.written:
            summary.quarantine_file = str(self.quarantine.path)
        return tally.finish()

    def set_total(self, total: int) -> None:
        """The number of sources, once known (a walk counted in the background): gives an ETA."""
        self._total = total
        if self._tally is not None:
            self._tally.total = total

    def close(self) -> None:
        if self._own_decoder is not None:
            self._own_decoder.close()

    def __enter__(self) -> IngestPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- before and after -----------------------------------------------------------------

    # The steps live in indexer.ingest_steps, shared with the Ray runner (indexer.ray_ingest).

    def _start(self) -> None:
        if self.journal is not None:
            start_journal(self.journal, count=self.store.count, delete=self._delete)

    def _retire_missing(self, prefix: str, unlisted: list[str]) -> int:
        assert self.journal is not None
        return retire_missing(self.journal, prefix, unlisted)

    def _purge(self) -> None:
        if self.journal is not None:
            purge_stale(self.journal, self._delete)

    def _delete(self, ids: Sequence[str]) -> None:
        with self._store_lock:
            self.store.delete(ids)

    _journal_call = staticmethod(journal_call)

    # -- per item, on the decode threads ---------------------------------------------------

    def skip_by_stat(self, src: SourceFile) -> Work:
        """The feeder's step: a Work, finished as unchanged when the journal has this very file."""
        return skip_by_stat(
            src, self.journal, self.namespace, retry_quarantined=self.options.retry_quarantined
        )

    def prepare(self, w: Work) -> None:
        """Read, hash, skip by content, decode. Sets w.decoded, or finishes w."""
        prepare(
            w,
            limits=self.limits,
            namespace=self.namespace,
            bundle_id=self.bundle_id,
            decoders=self.decoders,
            stored=self._stored_sentinel,
        )

    def _stored_sentinel(self, point_id: str) -> dict[str, Any] | None:
        try:
            with self._store_lock:
                stored = self.store.get([point_id])
        except Exception as exc:  # the store is unreachable: nothing else can go on either
            raise IngestAborted(f"reading from the store failed: {exc}") from exc
        return stored[0].payload if stored else None


class _Stages:
    """One run's threads and hand-offs."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        flow: Flow,
        budget: Budget,
        writer: Writer,
        check: Callable[[], None] | None,
        *,
        track_seen: bool,
    ) -> None:
        self.p, self.flow, self.budget, self.writer, self.check = pipeline, flow, budget, writer, check
        self.track_seen = track_seen
        self.encode_q: queue.Queue[Work] = queue.Queue()
        self.write_q: queue.Queue[Work | Rejected] = queue.Queue()
        self.decoding = 0  # items inside the decode stage
        self.unlisted: list[str] = []  # folders the walk could not list
        self._lock = threading.Lock()
        threads = 2 * max(1, self.p.decoder.workers)  # reading and hashing overlap the workers' decoding
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ingest-decode")

    def run(self, sources: Iterator[SourceFile | Rejected]) -> None:
        threads = [
            threading.Thread(target=self.flow.guard(self._feed, sources), name="ingest-feed", daemon=True),
            threading.Thread(target=self.flow.guard(self._write), name="ingest-write", daemon=True),
        ]
        threads += [
            threading.Thread(
                target=self.flow.guard(self._encode, encoder), name=f"ingest-encode-{i}", daemon=True
            )
            for i, encoder in enumerate(self.p.encoders)
        ]
        for t in threads:
            t.start()
        try:
            self.flow.wait(self.check)
        finally:
            self.flow.stop()
            self.pool.shutdown(wait=True, cancel_futures=True)
            for t in threads[1:]:
                t.join()
            threads[0].join(timeout=1.0)  # a blocked sources iterator is left to its owner
        self.flow.raise_error()

    # -- feeder ---------------------------------------------------------------------------

    def _feed(self, sources: Iterator[SourceFile | Rejected]) -> None:
        seen: list[str] = []
        for item in sources:
            if self.check is not None:
                self.check()
            if not self.flow.take_slot():
                return
            if isinstance(item, Rejected):
                if item.stage == Stage.WALK:
                    self.unlisted.append(item.source)
                self.write_q.put(item)
                continue
            if self.track_seen:
                seen.append(item.source)
                if len(seen) >= _SEEN_BATCH:
                    self._mark_seen(seen)
                    seen = []
            w = self.p.skip_by_stat(item)
            if w.result is not None:
                self.write_q.put(w)
                continue
            with self._lock:
                self.decoding += 1
            self.pool.submit(self.flow.guard(self._prepare), w)
        self._mark_seen(seen)
        self.flow.feeding_done()

    def _mark_seen(self, sources: list[str]) -> None:
        if sources and self.p.journal is not None:
            IngestPipeline._journal_call(lambda: self.p.journal.mark_seen(sources))  # type: ignore[union-attr]

    # -- decode ---------------------------------------------------------------------------

    def _prepare(self, w: Work) -> None:
        try:
            if self.flow.stopped:
                return
            try:
                self.p.prepare(w)
            except Skip as skip:
                w.finish(skip.result)
            except (IngestAborted, MemoryError):
                raise
            except Exception as exc:  # a bug shown by one file fails that file, not the run
                log.exception("ingest of %s failed unexpectedly", w.src.source)
                w.finish(ItemResult(ItemStatus.FAILED, f"{type(exc).__name__}: {exc}", Stage.DECODE))
            if w.result is not None:
                self.write_q.put(w)
            elif self.budget.acquire(w.held, self.flow):
                self.encode_q.put(w)
        finally:
            with self._lock:
                self.decoding -= 1

    # -- encode ---------------------------------------------------------------------------

    def _encode(self, encoder: BatchEncoder) -> None:
        opts = self.p.options
        while (first := self.flow.get(self.encode_q)) is not None:
            batch, units = [first], first.units
            waited = 0.0
            while units < opts.batch_size:
                try:
                    w = self.encode_q.get_nowait()
                except queue.Empty:
                    if self.decoding == 0 or waited >= opts.batch_wait:
                        break
                    try:
                        w = self.encode_q.get(timeout=0.01)
                    except queue.Empty:
                        waited += 0.01
                        continue
                batch.append(w)
                units += w.units
            held = sum(w.held for w in batch)
            try:
                encoder.encode(batch)
            finally:
                self.budget.release(held)
            for w in batch:
                if (
                    w.result is None and w.embedding is None
                ):  # defensive: every item leaves embedded or finished
                    w.finish(ItemResult(ItemStatus.FAILED, "not embedded", Stage.EMBED))
                self.write_q.put(w)

    # -- write ----------------------------------------------------------------------------

    def _write(self) -> None:
        limit = self.p.options.write_batch
        while (first := self.flow.get(self.write_q)) is not None:
            batch = [first]
            points = _points(first)
            while points < limit:
                try:
                    item = self.write_q.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
                points += _points(item)
            works = [w for w in batch if isinstance(w, Work)]
            for w in works:
                if w.embedding is not None:
                    self.p.encoder.records(w)
            self.writer.flush(works)
            for r in batch:
                if isinstance(r, Rejected):
                    self.writer.reject(r)
            self.flow.release_slots(len(batch))


def _points(item: Work | Rejected) -> int:
    """About how many points an item will write (its records are built just before)."""
    if not isinstance(item, Work):
        return 0
    return item.units if item.embedding is not None else len(item.records)


def decode_stage(
    embedder: Embedder, decoder: MediaDecoder, options: PipelineOptions, *, device_jpeg: bool | None = None
) -> Decoders:
    """The decode stage over `decoder`, fitting images to `embedder`'s image tower. JPEGs are
    left to the device when `device_jpeg` (None: when the model is on CUDA and image_decode is
    auto, or image_decode is device). Also built by Ray workers (indexer.ray_stages)."""
    pixels = PixelEncoder(embedder.encoder, draft=options.jpeg_draft)
    target = replace(pixels.target, max_pixels=options.max_image_pixels)
    if device_jpeg is None:
        cuda = embedder.encoder.bundle.device.type == "cuda"
        device_jpeg = options.image_decode == "device" or (options.image_decode == "auto" and cuda)
    return Decoders(embedder, decoder, target, image_timeout=options.decode_timeout, device_jpeg=device_jpeg)


def encode_stage(
    embedder: Embedder, decoders: Decoders, options: PipelineOptions, namespace: str
) -> BatchEncoder:
    """An encode stage over `embedder`'s towers; a JPEG its device cannot decode goes back to
    `decoders`' workers."""
    return BatchEncoder(
        embedder,
        PixelEncoder(embedder.encoder, draft=options.jpeg_draft),
        namespace,
        batch_size=options.batch_size,
        max_payload_bytes=options.max_payload_bytes,
        redecode=decoders.decode_in_worker,
    )


def decoder_like(d: MediaDecoder, options: PipelineOptions, *, workers: int | None = None) -> MediaDecoder:
    """A decoder pool of the pipeline's own size (or `workers`), with the embedder's decoder's caps."""
    return MediaDecoder(
        timeout=options.decode_timeout,
        sample_rate=d.sample_rate,
        fps=d.fps,
        max_frames=d.max_frames,
        short_side=d.short_side,
        workers=workers or options.decode_workers,
        max_audio_seconds=d.limits.max_audio_seconds,
        max_video_seconds=d.limits.max_video_seconds,
        max_frame_pixels=d.limits.max_frame_pixels,
        memory_limit=d.runner.memory_limit,
    )

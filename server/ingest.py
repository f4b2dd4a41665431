"""The server side of remote ingest: one Ingest stream runs the ingest pipeline over the files it
receives (the protocol is described with the RPC in search.proto).

Headers are checked against the journal before any bytes come, so an unchanged file is never
sent. Wanted files are spooled to a temporary folder as their chunks arrive and handed to the
pipeline once complete; each spooled file is deleted as soon as its outcome is known. The stream
is read only while the spool holds less than `spool_bytes` of files the pipeline has not
finished, so gRPC's flow control slows a client that sends faster than the pipeline decodes and
encodes. Nothing here reads gRPC objects: the servicer hands over the request stream and a
RequestContext, and sends what this yields.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from encoders.modality import Modality
from indexer.ingest_local import default_journal
from indexer.journal import Journal
from indexer.manifest import IndexField
from indexer.pipeline import IngestPipeline, PipelineOptions
from indexer.progress import IngestSummary
from indexer.sources import ItemResult, ItemStatus, SourceFile, Stage
from indexer.tenancy import namespace, tenant_store
from mmsearch.v1 import search_pb2 as pb
from server import convert, limits
from server.config import ServerConfig
from server.context import RequestContext
from server.errors import InvalidArgument, ResourceExhausted
from server.ingest_spool import Spooled, open_spool, spool_file
from server.services import Services

log = logging.getLogger("mmsearch.server")
# How often the pipeline's feeder looks whether the call was stopped while it waits for files.
POLL_SECONDS = 0.2
# After a stop, how long the pipeline gets to wind down before the stream lets go of it.
STOP_WAIT_SECONDS = 30.0
_END = object()


def journal_path(config: ServerConfig) -> Path:
    """The server's ingest journal: the one a local ingest of the same store uses (beside the
    embedded store; per collection in the data dir of a server over Qdrant). One SQLite file
    holds every tenant's namespace."""
    return default_journal(config.data_dir, config.collection if config.qdrant_url else None)


def pipeline_options(config: ServerConfig, index_fields: tuple[IndexField, ...]) -> PipelineOptions:
    # One decode worker per core unless set, as a local ingest has (0: share the query decoders).
    workers = config.ingest_decode_workers
    if workers is None:
        workers = os.cpu_count() or 1
    return PipelineOptions(
        decode_workers=workers, max_payload_bytes=config.max_item_payload_bytes, index_fields=index_fields
    )


class IngestService:
    """Runs Ingest streams: at most `ingest_streams` at once (each has its own decode workers and
    shares the one model); later streams wait for a slot."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.config = services.config
        self._slots: asyncio.Semaphore | None = None
        self._optimizing: asyncio.Future[None] | None = None

    async def stream(
        self, ctx: RequestContext, requests: AsyncIterator[pb.IngestRequest]
    ) -> AsyncIterator[pb.IngestResponse]:
        first = await anext(requests, None)
        if first is None or first.WhichOneof("message") != "start":
            raise InvalidArgument("an Ingest stream must begin with an IngestStart message")
        start = first.start
        if start.sync and not start.sync_prefix:
            raise InvalidArgument("start.sync needs start.sync_prefix, the library's root")
        try:
            fields = tuple(IndexField.parse(s) for s in start.index_fields)
        except ValueError as exc:
            raise InvalidArgument(f"start.index_fields: {exc}") from None
        if self._slots is None:
            self._slots = asyncio.Semaphore(max(1, self.config.ingest_streams))
        wrote = False
        async with self._slots:
            session = _Session(self.services, ctx, start, pipeline_options(self.config, fields))
            async for response in session.run(requests):
                if response.WhichOneof("message") == "summary":
                    wrote = response.summary.indexed > 0 or response.summary.removed > 0
                yield response
        if wrote:
            # Build the new points' index in the background, as the CLI does after a local ingest.
            self._optimizing = asyncio.ensure_future(asyncio.to_thread(self._optimize))

    def _optimize(self) -> None:
        try:
            self.services.store.optimize()
        except Exception:  # queries still work unindexed; the next write tries again
            log.exception("optimizing the index after an ingest failed")


@dataclass
class _Tally:
    quarantined: int = 0  # files set aside here, never seen by the pipeline
    failed: int = 0


class _Session:
    """One Ingest stream: reads requests, feeds the pipeline, answers outcomes and a summary."""

    def __init__(
        self, services: Services, ctx: RequestContext, start: pb.IngestStart, options: PipelineOptions
    ) -> None:
        self.services = services
        self.config = services.config
        self.ctx = ctx
        self.start = start
        self.options = options
        self.loop = asyncio.get_running_loop()
        self.responses: asyncio.Queue[pb.IngestResponse | BaseException | None] = asyncio.Queue()
        self.feed: queue.Queue[Any] = queue.Queue()
        # Files the pipeline holds, by the identity of the SourceFile it reports them with.
        self.in_pipeline: dict[int, tuple[int, Path | None, int]] = {}
        self.wanted: dict[int, Spooled] = {}  # announced, wanted, not yet complete
        self.spooled = 0  # bytes of complete files the pipeline has not finished
        self.freed = asyncio.Event()
        self.local = _Tally()
        self.last_id = -1
        self.current: Spooled | None = None  # the file whose chunks are arriving
        self.journal: Journal | None = None

    async def run(self, requests: AsyncIterator[pb.IngestRequest]) -> AsyncIterator[pb.IngestResponse]:
        self.spool, self.spool_lock = await asyncio.to_thread(open_spool, self.config.ingest_spool_dir)
        try:
            self.journal, pipeline = await asyncio.to_thread(self._open)
        except BaseException:
            await asyncio.to_thread(self._cleanup, None)
            raise
        worker = asyncio.ensure_future(asyncio.to_thread(self._run_pipeline, pipeline))
        reader = asyncio.ensure_future(self._read(requests))
        worker.add_done_callback(self._finish)
        reader.add_done_callback(self._reader_done)
        try:
            while True:
                item = await self.responses.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # A client gone, a deadline passed or an error: stop the pipeline at its next check
            # (what it acknowledged stays), and clean up once it has let go of the spool.
            self.ctx.cancel()
            reader.cancel()
            self.feed.put(_END)
            for spooled in self.wanted.values():
                spooled.close()
            await self._stopped(worker, pipeline)

    def _open(self) -> tuple[Journal, IngestPipeline]:
        ns = namespace(self.ctx.tenant)
        journal = Journal(journal_path(self.config), namespace=ns, bundle_id=self.services.bundle_id)
        try:
            store = tenant_store(self.services.store, self.ctx.tenant)
            pipeline = IngestPipeline(
                self.services.embedder, store, self.options, namespace=ns, journal=journal
            )
        except BaseException:
            journal.close()
            raise
        return journal, pipeline

    async def _stopped(self, worker: asyncio.Future[IngestSummary], pipeline: IngestPipeline) -> None:
        """Wait for the pipeline to stop (its current step at most), then clean up. The stream's
        slot is held meanwhile, so a stopped run never overlaps the next one."""
        try:
            done, _ = await asyncio.wait([worker], timeout=STOP_WAIT_SECONDS)
            if not done:
                log.warning("ingest: the stopped pipeline is still finishing its current step")
                await asyncio.shield(worker)
        except asyncio.CancelledError:  # the server is shutting down: clean up once it stops
            worker.add_done_callback(lambda _: self._cleanup(pipeline))
            raise
        except Exception:  # its error was the stream's to report, if anyone still listens
            log.debug("ingest pipeline stopped with an error", exc_info=True)
        await asyncio.to_thread(self._cleanup, pipeline)

    def _cleanup(self, pipeline: IngestPipeline | None) -> None:
        if pipeline is not None:
            pipeline.close()
        if self.journal is not None:
            self.journal.close()
        shutil.rmtree(self.spool, ignore_errors=True)
        self.spool_lock.close()

    # -- the pipeline, on its own thread ---------------------------------------------------

    def _run_pipeline(self, pipeline: IngestPipeline) -> IngestSummary:
        prefix = self.start.sync_prefix if self.start.sync else None
        return pipeline.run(self._sources(), on_item=self._on_item, check=self.ctx.check, sync_prefix=prefix)

    def _sources(self) -> Iterator[SourceFile]:
        while True:
            try:
                item = self.feed.get(timeout=POLL_SECONDS)
            except queue.Empty:
                self.ctx.check()  # a stopped call must not look like a complete run (sync)
                continue
            if item is _END:
                self.ctx.check()
                return
            yield item

    def _on_item(self, source: SourceFile, result: ItemResult) -> None:
        file_id, path, size = self.in_pipeline.pop(id(source))
        if path is not None:
            path.unlink(missing_ok=True)
        outcome = pb.FileOutcome(
            file_id=file_id,
            status=result.status.value,
            ids=list(result.ids),
            media_id=result.media_id,
            reason=result.reason or "",
            stage=result.stage.value if result.stage else "",
            points=result.points,
        )
        self.loop.call_soon_threadsafe(self._freed_and_answer, size, outcome)

    def _freed_and_answer(self, size: int, outcome: pb.FileOutcome) -> None:
        self.spooled -= size
        self.freed.set()
        self.responses.put_nowait(pb.IngestResponse(outcome=outcome))

    def _finish(self, worker: asyncio.Future[IngestSummary]) -> None:
        if worker.cancelled():
            self.responses.put_nowait(None)
            return
        exc = worker.exception()
        if exc is not None:
            self.responses.put_nowait(exc)
            return
        s = worker.result()
        summary = pb.IngestSummary(
            indexed=s.indexed,
            unchanged=s.unchanged,
            quarantined=s.quarantined + self.local.quarantined,
            failed=s.failed + self.local.failed,
            removed=s.removed,
            points=s.points,
            seconds=s.seconds,
            items_per_s=s.items_per_s,
        )
        self.responses.put_nowait(pb.IngestResponse(summary=summary))
        self.responses.put_nowait(None)

    # -- the request stream, on the event loop ---------------------------------------------

    def _reader_done(self, reader: asyncio.Future[None]) -> None:
        if not reader.cancelled() and (exc := reader.exception()) is not None:
            self.responses.put_nowait(exc)

    async def _read(self, requests: AsyncIterator[pb.IngestRequest]) -> None:
        while True:
            await self._wait_for_space()
            request = await anext(requests, None)
            if request is None:
                raise InvalidArgument(
                    "the Ingest stream ended without IngestEnd; files acknowledged so far are "
                    "written, send the rest again"
                )
            kind = request.WhichOneof("message")
            if kind == "files":
                await self._announce(request.files)
            elif kind == "chunk":
                await self._receive(request.chunk)
            elif kind == "end":
                if self.wanted:
                    first = next(iter(self.wanted.values())).source.source
                    raise InvalidArgument(
                        f"IngestEnd came before {len(self.wanted)} wanted file(s) were sent, e.g. {first}"
                    )
                self.feed.put(_END)
                return
            else:
                raise InvalidArgument(f"unexpected message in an Ingest stream: {kind or 'empty'}")

    async def _wait_for_space(self) -> None:
        # Read on only while the pipeline's backlog of spooled files is under the cap; a single
        # file larger than the cap still passes (nothing else is spooled then).
        while self.spooled >= self.config.ingest_spool_bytes and self.in_pipeline:
            self.freed.clear()
            await self.freed.wait()

    async def _announce(self, files: pb.IngestFiles) -> None:
        checked = [self._header(h) for h in files.files]
        unchanged = await asyncio.to_thread(
            self._unchanged, [c for c in checked if isinstance(c, SourceFile)]
        )
        wanted: list[int] = []
        for header, item in zip(files.files, checked, strict=True):
            if isinstance(item, ItemResult):
                self._answer_here(header.file_id, item)
            elif item.text is not None:  # inline text: no bytes to wait for
                self._to_pipeline(header.file_id, item, None, 0)
            elif id(item) in unchanged:
                # The pipeline confirms it from the journal (and marks it seen for sync) without
                # reading it: the path it is given is never opened, and no bytes are sent.
                unsent = replace(item, path=self.spool / f"{header.file_id}.unsent")
                self._to_pipeline(header.file_id, unsent, None, 0)
            else:
                self.wanted[header.file_id] = Spooled(
                    item, spool_file(self.spool, header.file_id, header.source), self._cap(item)
                )
                wanted.append(header.file_id)
        self.responses.put_nowait(
            pb.IngestResponse(wanted=pb.FilesWanted(file_ids=wanted, unchanged=len(unchanged)))
        )

    def _unchanged(self, sources: list[SourceFile]) -> set[int]:
        journal = self.journal
        assert journal is not None  # opened before the stream is read
        return {id(s) for s in sources if journal.is_unchanged(s.source, s.size, s.mtime, s.metadata)}

    def _header(self, h: pb.FileHeader) -> SourceFile | ItemResult:
        """The header as a SourceFile, or the outcome of a file refused on its header alone."""
        if h.file_id <= self.last_id:
            raise InvalidArgument(
                f"file_id {h.file_id} is not above the previous one ({self.last_id}): number files 0, 1, 2, ..."
            )
        self.last_id = h.file_id
        where = f"files[{h.file_id}]"
        try:
            limits.check_source(h.source, self.config, f"{where}.source")
            if not h.source:
                raise InvalidArgument(f"{where}.source is empty")
            modality = convert.modality_from_proto(h.modality, field=f"{where}.modality")
            metadata = _metadata(h.metadata_json, where)
            limits.check_metadata(metadata, self.config, f"{where}.metadata")
            if h.HasField("text") and modality != Modality.TEXT:
                raise InvalidArgument(f"{where} carries inline text but its modality is {modality}")
        except InvalidArgument as exc:
            return ItemResult(ItemStatus.FAILED, exc.message, Stage.READ)
        return SourceFile(
            source=h.source,
            modality=modality,
            size=h.size,
            mtime=h.mtime,
            text=h.text if h.HasField("text") else None,
            metadata=metadata,
            origin=h.origin or None,
            external_id=h.id or None,
        )

    def _cap(self, source: SourceFile) -> int | None:
        if source.modality == Modality.IMAGE:
            return self.options.max_file_bytes + 1
        if source.modality == Modality.TEXT:
            return self.options.max_text_bytes + 1
        return None

    async def _receive(self, chunk: pb.FileChunk) -> None:
        spooled = self.wanted.get(chunk.file_id)
        if spooled is None:
            raise InvalidArgument(f"chunk for file {chunk.file_id}, which the server did not ask for")
        if self.current is not None and self.current is not spooled:
            raise InvalidArgument(
                f"chunk for file {chunk.file_id} while file {self.current.path.stem} is incomplete: "
                "send one file's chunks at a time"
            )
        self.current = spooled
        if spooled.received + len(chunk.data) > max(0, spooled.source.size):
            raise InvalidArgument(
                f"file {chunk.file_id} ({spooled.source.source}): more bytes than the "
                f"{spooled.source.size} its header announced"
            )
        data = chunk.data
        if spooled.cap is not None:  # past an image's or text's limit the pipeline reads nothing
            data = data[: max(0, spooled.cap - spooled.kept)]
        spooled.received += len(chunk.data)
        spooled.kept += len(data)
        if not chunk.error:
            try:
                await asyncio.to_thread(spooled.write, data, last=chunk.last)
            except OSError as exc:
                raise ResourceExhausted(
                    f"the server cannot spool {spooled.source.source}: {exc.strerror or exc} "
                    "(its ingest_spool_dir is full or not writable); files acknowledged so far are written"
                ) from None
        if not chunk.last:
            return
        del self.wanted[chunk.file_id]
        self.current = None
        if chunk.error:
            spooled.close()
            spooled.path.unlink(missing_ok=True)
            self._answer_here(chunk.file_id, ItemResult(ItemStatus.QUARANTINED, chunk.error, Stage.READ))
            return
        self._to_pipeline(
            chunk.file_id, replace(spooled.source, path=spooled.path), spooled.path, spooled.kept
        )

    def _to_pipeline(self, file_id: int, source: SourceFile, path: Path | None, size: int) -> None:
        self.in_pipeline[id(source)] = (file_id, path, size)
        self.spooled += size
        self.feed.put(source)

    def _answer_here(self, file_id: int, result: ItemResult) -> None:
        if result.status == ItemStatus.QUARANTINED:
            self.local.quarantined += 1
        else:
            self.local.failed += 1
        outcome = pb.FileOutcome(
            file_id=file_id,
            status=result.status.value,
            reason=result.reason or "",
            stage=result.stage.value if result.stage else "",
        )
        self.responses.put_nowait(pb.IngestResponse(outcome=outcome))


def _metadata(text: str, where: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{where}.metadata_json is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}.metadata_json must be a JSON object, got {type(value).__name__}")
    return value

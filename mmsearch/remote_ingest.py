"""Remote bulk ingest: stream a library to a server's Ingest RPC (`mmsearch ingest PATH --server`).

The client walks the library (or reads a manifest), announces each file by header (source,
size, mtime, metadata), and sends in chunks only the files the server asks for: a file its
journal has at this size and mtime is never read, so a re-run over an unchanged library costs
one stat per file. The server runs the same pipeline as a local ingest and answers each file's
outcome; the client keeps the tally, the progress bar and the quarantine report.

Flow control is gRPC's own: the request stream is produced on gRPC's sending thread, one message
at a time, and the server reads it only as fast as its pipeline takes files, so a fast client
waits on HTTP/2 flow control rather than filling the server's memory. Light: no torch, no model.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from indexer.manifest import DEFAULT_MAX_ERRORS, IndexField, ManifestReader, Rejected
from indexer.progress import IngestSummary, ProgressBar, Tally
from indexer.quarantine import Quarantine
from indexer.sources import ItemResult, ItemStatus, SourceFile, Stage
from indexer.walk import WalkStats, count_in_background, library_root, walk_sources
from mmsearch import client as mc
from mmsearch.v1 import search_pb2 as pb

CHUNK_BYTES = 1 << 20
HEADERS_PER_MESSAGE = 256
# Header messages announced ahead of the server's answers: enough that the server always knows
# the next files it will want, few enough that a huge library is not announced all at once.
LOOKAHEAD = 2
# How often a blocked sender looks whether the call has ended.
POLL_SECONDS = 0.2
_Reject = Callable[[Rejected], None]


class RemoteIngestError(ConnectionError):
    """The server ended the stream without a summary (it stopped or the connection dropped)."""


@dataclass
class _Stream:
    """The state shared by the sending thread (gRPC's) and the reading one (the caller's)."""

    # Files announced and not yet answered for, by file id (entries go as outcomes come, so
    # memory follows the files in flight, not the library's size).
    announced: dict[int, SourceFile] = field(default_factory=dict)
    next_id: int = 0
    answers: queue.Queue[list[int]] = field(default_factory=queue.Queue)
    done: threading.Event = field(default_factory=threading.Event)
    # What stopped the walk or the manifest (raised on gRPC's thread, re-raised to the caller).
    error: Exception | None = None


def ingest_remote(
    client: mc.MMSearchClient,
    root: str | Path | None = None,
    *,
    manifest: str | Path | None = None,
    max_errors: int = DEFAULT_MAX_ERRORS,
    sync: bool = False,
    index_fields: Iterable[IndexField] = (),
    progress: bool = False,
    quarantine_file: str | Path | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    timeout: float | None = None,
) -> IngestSummary:
    """Ingest the files under `root` (or the rows of `manifest`) into the server behind `client`.

    Returns the summary of the run as a local ingest gives it; files the server set aside are
    listed in it and written to `quarantine_file` (JSONL, created only when there is one).
    Raises grpc.RpcError with the server's status, RemoteIngestError when the stream ends early,
    FileNotFoundError / ManifestError for a missing library or manifest. What the server
    acknowledged before an error stays written, and a re-run resumes after it."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    tally = Tally()
    walk = WalkStats()
    sources: Iterable[SourceFile | Rejected]
    prefix = ""
    if root is not None and manifest is None:
        top = library_root(root)
        sources = walk_sources(top, walk)
        prefix = str(top) + os.sep if top.is_dir() else str(top)  # as a local ingest's sync
        count_in_background(top, lambda n: setattr(tally, "total", n))
    elif manifest is not None and root is None:
        if sync:
            raise ValueError("--sync needs a folder: it removes what is no longer in it")
        reader = ManifestReader(
            manifest, max_errors=max_errors, field_kinds={f.name: f.kind for f in index_fields}
        )
        sources = reader
        tally.total = reader.count()
    else:
        raise ValueError("ingest a folder or a manifest (--manifest), one of the two")
    quarantine = Quarantine(quarantine_file) if quarantine_file is not None else None
    bar = ProgressBar(enabled=progress, desc="ingest (remote)")
    start = pb.IngestStart(
        sync=sync, sync_prefix=prefix if sync else "", index_fields=[_spec(f) for f in index_fields]
    )
    state = _Stream()

    def reject(item: Rejected) -> None:
        result = ItemResult(ItemStatus.FAILED, item.reason, item.stage)
        tally.add(item.origin or item.source, result)
        if quarantine is not None:
            quarantine.add(item.source, item.reason, item.stage, ItemStatus.FAILED, origin=item.origin)

    requests = _requests(start, sources, state, reject, chunk_bytes)
    final: pb.IngestSummary | None = None
    try:
        for response in client.ingest_stream(requests, timeout=timeout):
            kind = response.WhichOneof("message")
            if kind == "wanted":
                state.answers.put(list(response.wanted.file_ids))
            elif kind == "outcome":
                _record(response.outcome, state, tally, quarantine)
                bar(tally.progress())
            elif kind == "summary":
                final = response.summary
    except grpc.RpcError:
        if state.error is not None:
            raise state.error from None
        raise
    finally:
        state.done.set()  # a sender waiting on an answer gives up
        bar(tally.progress())
        bar.close()
        if quarantine is not None:
            quarantine.close()
    if final is None:
        raise RemoteIngestError(
            "the server ended the ingest stream without a summary; run the same command again "
            "to resume (files it acknowledged are not sent again)"
        )
    if state.announced:
        left = next(iter(state.announced.values())).where
        raise RemoteIngestError(
            f"the server gave no outcome for {len(state.announced)} file(s), e.g. {left}; "
            "run the same command again to resume"
        )
    summary = tally.finish()
    summary.skipped = walk.skipped
    summary.removed = int(final.removed)
    if quarantine is not None and quarantine.written:
        summary.quarantine_file = str(quarantine.path)
    return summary


def _spec(f: IndexField) -> str:
    return f"{f.name}:{f.kind.value}"


def _record(outcome: pb.FileOutcome, state: _Stream, tally: Tally, quarantine: Quarantine | None) -> None:
    source = state.announced.pop(outcome.file_id, None)
    if source is None:
        raise RemoteIngestError(f"the server answered for file {outcome.file_id}, which is not pending")
    status = ItemStatus(outcome.status)
    stage = Stage(outcome.stage) if outcome.stage else None
    result = ItemResult(
        status,
        outcome.reason or None,
        stage,
        points=outcome.points,
        ids=tuple(outcome.ids),
        media_id=outcome.media_id,
    )
    tally.add(source.where, result)
    if quarantine is not None and not result.ok:
        quarantine.add(source, outcome.reason, stage or Stage.READ, status)


def _requests(
    start: pb.IngestStart,
    sources: Iterable[SourceFile | Rejected],
    state: _Stream,
    reject: _Reject,
    chunk_bytes: int,
) -> Iterator[pb.IngestRequest]:
    """The request stream: start, header batches a little ahead of the bytes, each wanted file
    in chunks in the order the server asked for them, end. Runs on gRPC's sending thread."""
    yield pb.IngestRequest(start=start)
    batches = _header_batches(sources, state, reject)
    unanswered = 0  # header messages the server has not answered yet
    wanted: deque[int] = deque()
    exhausted = False
    while not state.done.is_set():
        while unanswered:  # take every answer already here, without waiting
            try:
                wanted.extend(state.answers.get_nowait())
            except queue.Empty:
                break
            unanswered -= 1
        if not exhausted and unanswered < LOOKAHEAD and len(wanted) < HEADERS_PER_MESSAGE:
            try:
                batch = next(batches, None)
            except Exception as exc:  # a manifest past its error budget, a walk that failed
                state.error = exc
                return  # without IngestEnd: the server stops, keeping what it acknowledged
            if batch is None:
                exhausted = True
            else:
                unanswered += 1
                yield pb.IngestRequest(files=pb.IngestFiles(files=batch))
            continue
        if wanted:
            file_id = wanted.popleft()
            source = state.announced.get(file_id)
            if source is None:
                state.error = RemoteIngestError(f"the server asked for file {file_id}, never announced")
                return
            yield from _chunks(file_id, source, chunk_bytes)
            continue
        if not unanswered:
            yield pb.IngestRequest(end=pb.IngestEnd())
            return
        try:
            wanted.extend(state.answers.get(timeout=POLL_SECONDS))
            unanswered -= 1
        except queue.Empty:
            continue


def _header_batches(
    sources: Iterable[SourceFile | Rejected], state: _Stream, reject: _Reject
) -> Iterator[list[pb.FileHeader]]:
    batch: list[pb.FileHeader] = []
    for item in sources:
        if isinstance(item, Rejected):
            reject(item)
            continue
        file_id = state.next_id
        state.next_id += 1
        state.announced[file_id] = item
        batch.append(_header(file_id, item))
        if len(batch) >= HEADERS_PER_MESSAGE:
            yield batch
            batch = []
    if batch:
        yield batch


def _header(file_id: int, source: SourceFile) -> pb.FileHeader:
    header = pb.FileHeader(
        file_id=file_id,
        source=source.source,
        modality=mc.modality(source.modality.value),
        size=source.size,
        mtime=source.mtime,
        metadata_json=json.dumps(dict(source.metadata), ensure_ascii=False) if source.metadata else "",
        id=source.external_id or "",
        origin=source.origin or "",
    )
    if source.text is not None:
        header.text = source.text
    return header


def _chunks(file_id: int, source: SourceFile, chunk_bytes: int) -> Iterator[pb.IngestRequest]:
    """A file's bytes as chunks, at most the size its header announced (a file that grew since
    the walk is re-sent by the next run, its mtime having changed); a file that cannot be read
    is one chunk saying why."""
    path = source.path if source.path is not None else Path(source.source)
    try:
        if source.size < 0:  # the walk could not stat it: say why, as the local pipeline would
            path.stat()
            raise OSError(f"{path} changed while it was being read; run the ingest again")
        left = source.size
        with path.open("rb") as f:
            data = f.read(min(chunk_bytes, left))
            left -= len(data)
            while True:
                following = f.read(min(chunk_bytes, left)) if data and left > 0 else b""
                left -= len(following)
                last = not following
                yield pb.IngestRequest(chunk=pb.FileChunk(file_id=file_id, data=data, last=last))
                if last:
                    return
                data = following
    except OSError as exc:
        reason = f"cannot read file: {exc.strerror or exc}"
        yield pb.IngestRequest(chunk=pb.FileChunk(file_id=file_id, last=True, error=reason))


# Local-ingest flags that mean nothing to a server, and what to use instead.
_LOCAL_ONLY = {
    "workers": "the server's decode workers are its MMSEARCH_INGEST_DECODE_WORKERS setting",
    "journal": "the server keeps its own journal beside its store",
    "no_journal": "the server keeps its own journal beside its store",
    "exact_images": "a server decodes as its settings say",
}


def run_remote(args: argparse.Namespace) -> IngestSummary:
    """`mmsearch ingest PATH --server HOST:PORT` (or `--manifest FILE`): the CLI's remote branch."""
    from mmsearch.cli_auth import connect
    from mmsearch.settings import server_config

    for name, instead in _LOCAL_ONLY.items():
        if getattr(args, name, None):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} applies to a local ingest, not with --server: {instead}")
    report = args.quarantine or default_report(server_config(args).data_dir)
    with connect(args) as client:
        return ingest_remote(
            client,
            args.path,
            manifest=args.manifest,
            sync=args.sync,
            max_errors=args.max_errors,
            index_fields=[IndexField.parse(f) for f in args.index_field],
            progress=not args.no_progress,
            quarantine_file=report,
        )


def default_report(data_dir: Path) -> Path:
    """Where the client writes the quarantine report of a run: DATA/quarantine/, as a local
    ingest does (created only when a file is set aside)."""
    return data_dir / "quarantine" / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.jsonl"

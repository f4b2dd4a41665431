"""The ingest pipeline's per-item steps and journal upkeep as plain functions, for every runner.

indexer.pipeline runs them on its threads; indexer.ray_ingest runs the same steps as Ray Data
operations (the journal skip on the driver, reading and decoding in Ray tasks, the store's word
on the driver before writing). One copy of each step, so both produce the same outcomes.
Torch-free (the decoders are passed in).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from indexer.ingest_flow import IngestAborted
from indexer.ingest_work import Action, ReadLimits, Work, identify, media_id_of, read_source, same_content
from indexer.journal import Journal, JournalError, metadata_digest
from indexer.schema import Key
from indexer.sources import ItemResult, ItemStatus, SourceFile, Stage

if TYPE_CHECKING:
    from indexer.ingest_decode import Decoders

log = logging.getLogger(__name__)
_DELETE_BATCH = 1000
# The sentinel payload stored under an id, or None when there is none.
StoredSentinel = Callable[[str], Mapping[str, Any] | None]
DeletePoints = Callable[[Sequence[str]], None]


def skip_by_stat(
    src: SourceFile, journal: Journal | None, namespace: str, *, retry_quarantined: bool = False
) -> Work:
    """The feeder's step: a Work, finished as unchanged when the journal has this very file (or
    as quarantined when an earlier run set this very file aside)."""
    w = Work(src)
    if journal is None:
        return w
    w.prior = journal.entry(src.source)
    prior = w.prior
    if (
        prior is not None
        and src.path is not None
        and (prior.size, prior.mtime) == (src.size, src.mtime)
        and prior.meta_hash == metadata_digest(src.metadata)
    ):
        result = ItemResult(
            ItemStatus.UNCHANGED,
            points=len(prior.point_ids),
            ids=prior.point_ids,
            media_id=media_id_of(src, prior.content_hash, namespace),
        )
        w.finish(result)
        return w
    if src.path is not None and not retry_quarantined:
        reason = journal.set_aside(src.source, src.size, src.mtime, src.metadata)
        if reason is not None:
            w.from_journal = True
            w.finish(ItemResult(ItemStatus.QUARANTINED, reason, Stage.DECODE))
    return w


def prepare(
    w: Work,
    *,
    limits: ReadLimits,
    namespace: str,
    bundle_id: str,
    decoders: Decoders,
    stored: StoredSentinel | None = None,
) -> None:
    """Read, hash, skip by content, decode. Sets w.decoded, or finishes w. `stored` looks up
    the item's sentinel point; None leaves that check to the writer (see settle_stored)."""
    read_source(w, limits)
    identify(w, namespace, bundle_id)
    prior, base = w.prior, w.base
    assert base is not None
    if prior is not None and (prior.content_hash, prior.meta_hash) == (
        w.digest,
        metadata_digest(w.src.metadata),
    ):
        # Touched (new mtime), same content: confirm it in the journal, nothing to embed.
        result = ItemResult(
            ItemStatus.UNCHANGED, points=len(prior.point_ids), ids=prior.point_ids, media_id=base.media_id
        )
        w.finish(result, Action.CONFIRM)
        return
    if stored is not None:
        settle_stored(w, stored(w.sentinel))
        if w.result is not None:
            return
    decoders.decode(w)


def settle_stored(w: Work, payload: Mapping[str, Any] | None) -> None:
    """What the store's sentinel point of an identified item says: the item is indexed as it is
    (finished as unchanged, its records dropped), or an earlier version is (w.previous)."""
    base = w.base
    if payload is None or base is None:
        return
    ids = tuple(payload.get(Key.POINT_IDS) or (w.sentinel,))
    if same_content(dict(payload), base):
        # In the store but not the journal (a run killed before journaling it).
        w.records = []
        w.finish(
            ItemResult(ItemStatus.UNCHANGED, points=len(ids), ids=ids, media_id=base.media_id), Action.CONFIRM
        )
        return
    w.previous = (str(payload.get(Key.CONTENT_HASH, "")), ids)


# -- the journal beside the store -----------------------------------------------------------


def journal_call(fn: Callable[[], None]) -> None:
    """A journal write; a journal that cannot be written stops the run."""
    try:
        fn()
    except JournalError as exc:
        raise IngestAborted(str(exc)) from exc


def start_journal(journal: Journal, *, count: Callable[[], int], delete: DeletePoints) -> None:
    """Before a run: a journal over an emptied (or replaced) store would skip files that are not
    there, so it starts over; stale points a killed run left are deleted."""
    if journal.count() and count() == 0:
        log.warning(
            "ingest journal %s describes points this store does not hold: starting over", journal.path
        )
        journal_call(journal.clear)
    purge_stale(journal, delete)


def purge_stale(journal: Journal, delete: DeletePoints) -> None:
    """Delete stale points no journaled source holds any more (no item may be in flight)."""
    stale = journal.purgeable()
    ids = [i for _, point_ids in stale for i in point_ids]
    try:
        for start in range(0, len(ids), _DELETE_BATCH):
            delete(ids[start : start + _DELETE_BATCH])
    except Exception as exc:  # any store failure: the stale entries stay for the next run
        raise IngestAborted(f"removing {len(ids)} stale points from the store failed: {exc}") from exc
    journal_call(lambda: journal.drop_stale(h for h, _ in stale))


def retire_missing(journal: Journal, prefix: str, unlisted: Sequence[str]) -> int:
    """Forget the sources under `prefix` this run did not see, making their points stale; not
    those under a folder the walk could not list (they may well still be there)."""
    hidden = tuple(folder.rstrip(os.sep) + os.sep for folder in unlisted)
    removed, batch = 0, []
    # Retired page by page: the listing resumes after the last source it returned.
    for entry in journal.missing(prefix):
        if hidden and entry.source.startswith(hidden):
            continue
        batch.append(entry)
        if len(batch) == _DELETE_BATCH:
            journal_call(partial(journal.retire, batch))
            removed, batch = removed + len(batch), []
    journal_call(partial(journal.retire, batch))
    return removed + len(batch)

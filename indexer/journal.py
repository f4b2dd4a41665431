"""The ingest journal: which sources are indexed, at which size, mtime, content and metadata.

A re-run skips an unchanged file by (source, size, mtime) before reading a byte of it, and a
changed one is re-indexed with its old points removed. One SQLite file (stdlib): every write is
a transaction in write-ahead-log mode, so a process killed at any moment leaves the journal as it
was after its last commit. The pipeline records a file only after its points are in the store;
a file whose points were lost is therefore never recorded, and one recorded twice is harmless.

Torch-free: the remote ingest client and the server's ingest handler use it too.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.schema import DEFAULT_NAMESPACE

JOURNAL_VERSION = 1
# Rows per page when listing the sources a sync found missing.
_PAGE = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    namespace TEXT NOT NULL,
    source TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    meta_hash TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    bundle_id TEXT NOT NULL,
    point_ids TEXT NOT NULL,
    PRIMARY KEY (namespace, source)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_by_content ON files (namespace, content_hash);
CREATE TABLE IF NOT EXISTS stale (
    namespace TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    point_ids TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS stale_by_content ON stale (namespace, content_hash);
CREATE TABLE IF NOT EXISTS quarantined (
    namespace TEXT NOT NULL,
    source TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    meta_hash TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (namespace, source)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


# (content hash, point ids): points an earlier version of a source left behind.
Stale = tuple[str, tuple[str, ...]]


class JournalError(Exception):
    """The journal file cannot be used (another version, not a journal, disk full)."""


@dataclass(frozen=True)
class JournalEntry:
    source: str
    size: int
    mtime: float
    meta_hash: str
    content_hash: str
    bundle_id: str
    point_ids: tuple[str, ...]


@dataclass(frozen=True)
class SetAside:
    """A file quarantined at this size and mtime (see Journal.set_aside)."""

    source: str
    size: int
    mtime: float
    meta_hash: str
    reason: str


def metadata_digest(metadata: Mapping[str, Any] | None) -> str:
    """A stable digest of a source's metadata: a changed caption re-writes the payload."""
    if not metadata:
        return ""
    text = json.dumps(metadata, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class Journal:
    """The journal of one id namespace in one SQLite file (created when missing).

    `bundle_id` binds it to one embedding space: rows written under another bundle never count
    as unchanged. The pipeline binds an unbound journal to its embedder's bundle."""

    def __init__(
        self, path: str | Path, *, namespace: str = DEFAULT_NAMESPACE, bundle_id: str | None = None
    ) -> None:
        self.path = Path(path)
        self.namespace = namespace
        self.bundle_id = bundle_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            # One connection shared by the pipeline's threads, each call under the lock.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives the process being killed (not a power cut,
            # which at worst forgets recent files: they are re-checked, never duplicated).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._check_version()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"ingest journal {self.path} cannot be opened: {exc}") from exc
        self._seen = False

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM journal_info WHERE key = 'version'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO journal_info VALUES ('version', ?)", (str(JOURNAL_VERSION),))
        elif row[0] != str(JOURNAL_VERSION):
            raise JournalError(
                f"ingest journal {self.path} has version {row[0]}, this mmsearch writes {JOURNAL_VERSION}: "
                "delete it (the next ingest re-checks every file by content)"
            )

    # -- reads ----------------------------------------------------------------------------

    def is_unchanged(
        self, source: str, size: int, mtime: float, metadata: Mapping[str, Any] | None = None
    ) -> bool:
        """True when `source` was indexed at this size and mtime with this metadata."""
        entry = self.entry(source)
        return (
            entry is not None
            and entry.size == size
            and entry.mtime == mtime
            and entry.meta_hash == metadata_digest(metadata)
        )

    def entry(self, source: str) -> JournalEntry | None:
        """The recorded state of `source` in this namespace and bundle, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT source, size, mtime, meta_hash, content_hash, bundle_id, point_ids FROM files "
                "WHERE namespace = ? AND source = ?",
                (self.namespace, source),
            ).fetchone()
        if row is None:
            return None
        entry = _entry(row)
        return entry if self.bundle_id is None or entry.bundle_id == self.bundle_id else None

    def set_aside(
        self, source: str, size: int, mtime: float, metadata: Mapping[str, Any] | None
    ) -> str | None:
        """Why `source` was quarantined, if it was at this very size, mtime and metadata: a
        re-run does not decode (and wait on) a hostile file again until it changes."""
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime, meta_hash, reason FROM quarantined WHERE namespace = ? AND source = ?",
                (self.namespace, source),
            ).fetchone()
        if row is None or (int(row[0]), float(row[1]), row[2]) != (size, mtime, metadata_digest(metadata)):
            return None
        return str(row[3])

    def count(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM files WHERE namespace = ?", (self.namespace,))
            return int(row.fetchone()[0])

    # -- writes ---------------------------------------------------------------------------

    def record(
        self,
        entries: Sequence[JournalEntry],
        stale: Sequence[Stale] = (),
        quarantined: Sequence[SetAside] = (),
    ) -> None:
        """Record sources as indexed, in one transaction, with the points their earlier
        versions leave behind (removed by `purge` once nothing references them) and the files
        set aside as undecodable. Call only once the entries' points are stored."""
        rows = [
            (
                self.namespace,
                e.source,
                e.size,
                e.mtime,
                e.meta_hash,
                e.content_hash,
                e.bundle_id,
                json.dumps(list(e.point_ids)),
            )
            for e in entries
        ]
        stale_rows = [(self.namespace, h, json.dumps(list(ids))) for h, ids in stale if ids]
        aside = [(self.namespace, q.source, q.size, q.mtime, q.meta_hash, q.reason) for q in quarantined]
        self._write(
            ("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows),
            ("INSERT INTO stale VALUES (?, ?, ?)", stale_rows),
            ("DELETE FROM quarantined WHERE namespace = ? AND source = ?", [r[:2] for r in rows]),
            ("INSERT OR REPLACE INTO quarantined VALUES (?, ?, ?, ?, ?, ?)", aside),
        )

    def retire(self, entries: Sequence[JournalEntry]) -> None:
        """Forget sources that are gone; their points become stale (see `purge`)."""
        self._write(
            (
                "DELETE FROM files WHERE namespace = ? AND source = ?",
                [(self.namespace, e.source) for e in entries],
            ),
            (
                "INSERT INTO stale VALUES (?, ?, ?)",
                [(self.namespace, e.content_hash, json.dumps(list(e.point_ids))) for e in entries],
            ),
        )

    def purgeable(self) -> list[Stale]:
        """Stale points whose content no recorded source holds any more: safe to delete."""
        with self._lock:
            rows = self._db.execute(
                "SELECT content_hash, point_ids FROM stale WHERE namespace = ? AND content_hash NOT IN "
                "(SELECT content_hash FROM files WHERE namespace = ?)",
                (self.namespace, self.namespace),
            ).fetchall()
        return [(h, tuple(json.loads(ids))) for h, ids in rows]

    def drop_stale(self, content_hashes: Iterable[str]) -> None:
        """Forget stale entries once their points are deleted (or referenced again)."""
        self._write(
            (
                "DELETE FROM stale WHERE namespace = ? AND content_hash = ?",
                [(self.namespace, h) for h in set(content_hashes)],
            )
        )

    def clear(self) -> None:
        """Forget every source of this namespace (its store was emptied or replaced)."""
        self._write(
            ("DELETE FROM files WHERE namespace = ?", [(self.namespace,)]),
            ("DELETE FROM stale WHERE namespace = ?", [(self.namespace,)]),
            ("DELETE FROM quarantined WHERE namespace = ?", [(self.namespace,)]),
        )

    def _write(self, *statements: tuple[str, Sequence[tuple[Any, ...]]]) -> None:
        """Run the statements in one transaction (all or nothing)."""
        if not any(rows for _, rows in statements):
            return
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for sql, rows in statements:
                    if rows:
                        self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise JournalError(f"ingest journal {self.path}: {exc}") from exc

    # -- sync: which recorded sources were not seen in this run ---------------------------

    def begin_seen(self) -> None:
        """Start recording the sources a run sees (for `missing`)."""
        with self._lock:
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS seen (source TEXT PRIMARY KEY) WITHOUT ROWID")
            self._db.execute("DELETE FROM temp.seen")
        self._seen = True

    def mark_seen(self, sources: Iterable[str]) -> None:
        if not self._seen:
            raise RuntimeError("call begin_seen() first")
        self._write(("INSERT OR IGNORE INTO temp.seen VALUES (?)", [(s,) for s in sources]))

    def missing(self, prefix: str) -> Iterator[JournalEntry]:
        """Recorded sources starting with `prefix` that were not seen since begin_seen()."""
        if not self._seen:
            raise RuntimeError("call begin_seen() first")
        after = ""
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT source, size, mtime, meta_hash, content_hash, bundle_id, point_ids FROM files "
                    "WHERE namespace = ? AND source > ? AND substr(source, 1, ?) = ? "
                    "AND source NOT IN (SELECT source FROM temp.seen) ORDER BY source LIMIT ?",
                    (self.namespace, after, len(prefix), prefix, _PAGE),
                ).fetchall()
            if not rows:
                return
            yield from (_entry(r) for r in rows)
            after = rows[-1][0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _entry(row: tuple[Any, ...]) -> JournalEntry:
    source, size, mtime, meta_hash, content_hash, bundle_id, ids = row
    return JournalEntry(
        source, int(size), float(mtime), meta_hash, content_hash, bundle_id, tuple(json.loads(ids))
    )

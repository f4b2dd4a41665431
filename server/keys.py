"""API keys: who may call, as which tenant, with which scopes.

A key reads ``mms_<id>_<secret>``: the id finds the record, the secret (256 random bits) proves
it. Only the SHA-256 of the whole key is stored; for a random 256-bit secret a fast hash is the
right one (nothing to brute-force), and comparisons run in constant time. The records live in
one JSON file (mode 0600) that `mmsearch keys` edits and the server re-reads when it changes, so
a revoke takes effect on the next call without a restart. Imports no model code (a light CLI).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from indexer.tenancy import check_tenant

PREFIX = "mms"
FORMAT_VERSION = 1
_ID_BYTES = 6  # 12 hex characters: enough to tell keys apart, not a secret


class Scope(StrEnum):
    READ = "read"  # Search, Recommend, Embed, Get, Stats, MineHardNegatives
    WRITE = "write"  # Upsert, Delete, Ingest
    ADMIN = "admin"  # every method


class KeyFileError(ValueError):
    """The keys file is missing, unreadable or malformed; the message says which and where."""


@dataclass(frozen=True)
class ApiKey:
    """One key's record: everything but the secret."""

    id: str
    tenant: str
    scopes: tuple[Scope, ...]
    sha256: str
    created: str  # ISO 8601, UTC
    name: str = ""
    revoked: str | None = None  # when it was revoked

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["scopes"] = [s.value for s in self.scopes]
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ApiKey:
        return cls(
            id=str(d["id"]),
            tenant=check_tenant(str(d["tenant"])),
            scopes=parse_scopes(d["scopes"]),
            sha256=str(d["sha256"]),
            created=str(d["created"]),
            name=str(d.get("name") or ""),
            revoked=d.get("revoked"),
        )


def parse_scopes(raw: str | Iterable[str]) -> tuple[Scope, ...]:
    """Scopes from "read,write" or a list; raises ValueError naming an unknown one."""
    names = raw.split(",") if isinstance(raw, str) else list(raw)
    out: list[Scope] = []
    for n in (n.strip().lower() for n in names):
        if not n:
            continue
        try:
            out.append(Scope(n))
        except ValueError:
            allowed = ", ".join(s.value for s in Scope)
            raise ValueError(f"unknown scope {n!r}: expected some of {allowed}") from None
    if not out:
        raise ValueError("no scopes given: a key needs at least one of read, write, admin")
    return tuple(sorted(set(out), key=list(Scope).index))


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def split_key(key: str) -> str | None:
    """The key id of a well-formed key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != 2 * _ID_BYTES or not parts[2]:
        return None
    return parts[1]


class KeyStore:
    """The keys file. Reads re-load it when it has changed since the last read."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._keys: dict[str, ApiKey] = {}

    # -- the server's side -------------------------------------------------------------------

    def verify(self, presented: str) -> ApiKey | None:
        """The active key record for a presented key, or None (unknown, revoked or malformed)."""
        key_id = split_key(presented)
        if key_id is None:
            return None
        record = self._current().get(key_id)
        if record is None or record.revoked is not None:
            return None
        return record if hmac.compare_digest(record.sha256, digest(presented)) else None

    def _current(self) -> dict[str, ApiKey]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise KeyFileError(
                f"keys file {self.path} does not exist: create a key with "
                f"`mmsearch keys create --keys-file {self.path} --tenant NAME --scopes read`"
            ) from None
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if signature != self._signature:
                self._keys = {k.id: k for k in self._read()}
                self._signature = signature
            return self._keys

    def check(self) -> int:
        """Load the file now (a server checks it before it starts); the number of active keys."""
        return sum(1 for k in self._current().values() if k.revoked is None)

    def insecure_mode(self) -> bool:
        """Whether group or others may read or write the file (it should be 0600)."""
        return bool(os.stat(self.path).st_mode & 0o077)

    def _read(self) -> list[ApiKey]:
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") != FORMAT_VERSION:
                raise KeyFileError(f"keys file {self.path}: unknown version {data.get('version')!r}")
            return [ApiKey.from_json(k) for k in data["keys"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            if isinstance(exc, KeyFileError):
                raise
            raise KeyFileError(f"keys file {self.path} is not a valid keys file: {exc}") from exc

    # -- the CLI's side ----------------------------------------------------------------------

    def records(self) -> list[ApiKey]:
        return self._read()

    def create(self, tenant: str, scopes: Iterable[Scope], *, name: str = "") -> tuple[ApiKey, str]:
        """A new key for `tenant`: its record and the key itself, which is not stored anywhere."""
        check_tenant(tenant)
        with self._editing() as keys:
            key_id = secrets.token_hex(_ID_BYTES)
            while any(k.id == key_id for k in keys):
                key_id = secrets.token_hex(_ID_BYTES)
            secret = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
            record = ApiKey(
                id=key_id,
                tenant=tenant,
                scopes=parse_scopes([s.value for s in scopes]),
                sha256=digest(secret),
                created=_now(),
                name=name,
            )
            keys.append(record)
        return record, secret

    def revoke(self, key_id: str) -> ApiKey:
        """Mark a key revoked (kept in the file, so `list` still shows who it was)."""
        with self._editing() as keys:
            for i, k in enumerate(keys):
                if k.id == key_id:
                    if k.revoked is None:
                        keys[i] = replace(k, revoked=_now())
                    return keys[i]
        raise ValueError(f"no key with id {key_id!r} in {self.path} (see `mmsearch keys list`)")

    @contextlib.contextmanager
    def _editing(self) -> Iterator[list[ApiKey]]:
        """The records, to change in place; written back atomically (mode 0600) on success.
        An exclusive lock beside the file keeps two `mmsearch keys` runs from losing an edit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys = self._read()
            yield keys
            body = json.dumps({"version": FORMAT_VERSION, "keys": [k.to_json() for k in keys]}, indent=2)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # a leftover of a killed run: O_EXCL below must create it afresh
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(body + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)  # readers see the old file or the new one, never half
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

"""Manifests: a JSONL or CSV file listing what to ingest, with metadata for each item.

Each row names a file (`path`, relative to the manifest's folder or absolute) or carries inline
text (`text`), and optionally `modality`, `id` (the caller's id: point ids derive from it) and
`metadata` (an object). Every other field (caption, tags, year, ...) is metadata too, stored
under the payload's `meta` and filterable as ``meta.<field>`` (or by its bare name).

A row that cannot be used (malformed, a missing file, an unsupported type) becomes a Rejected
item naming its line; past `max_errors` of them the read stops with ManifestError. Torch-free.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from encoders.modality import Modality
from indexer.sources import SourceFile, Stage

RESERVED = ("path", "text", "modality", "id", "metadata")
MAX_LINE_BYTES = 1024 * 1024  # a JSONL line longer than this is refused (and skipped unread)
MAX_METADATA_BYTES = 64 * 1024  # per row, as JSON
DEFAULT_MAX_ERRORS = 100
_CSV_SUFFIXES = (".csv", ".tsv")


class ManifestError(Exception):
    """The manifest cannot be read, or too many of its rows are bad to go on."""


class FieldKind(StrEnum):
    KEYWORD = "keyword"
    INTEGER = "integer"
    FLOAT = "float"
    BOOL = "bool"
    TEXT = "text"  # full-text index (word match)


@dataclass(frozen=True)
class IndexField:
    """A metadata field that gets a payload index, so filters on it stay fast at any size."""

    name: str
    kind: FieldKind = FieldKind.KEYWORD

    @property
    def key(self) -> str:
        """The payload path of the field."""
        return self.name if self.name.startswith("meta.") else f"meta.{self.name}"

    @classmethod
    def parse(cls, spec: str) -> IndexField:
        """``caption``, ``year:integer``, ``score:float``, ``tags:keyword``, ``flag:bool``."""
        name, _, kind = spec.partition(":")
        name = name.strip()
        if not name or any(c in name for c in " []"):
            raise ValueError(f"index field {spec!r}: expected NAME or NAME:TYPE")
        try:
            return cls(name, FieldKind(kind.strip().lower() or FieldKind.KEYWORD))
        except ValueError:
            kinds = ", ".join(k.value for k in FieldKind)
            raise ValueError(f"index field {spec!r}: unknown type {kind!r} (one of {kinds})") from None


@dataclass(frozen=True)
class Rejected:
    """An item known to be unusable before the pipeline sees it."""

    source: str
    reason: str
    stage: Stage = Stage.MANIFEST
    origin: str | None = None


class ManifestReader:
    """Rows of one manifest as SourceFiles (or Rejected); counts rejections against a budget."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_errors: int = DEFAULT_MAX_ERRORS,
        field_kinds: Mapping[str, FieldKind] | None = None,
    ) -> None:
        self.path = Path(path).absolute()
        if not self.path.is_file():
            raise ManifestError(f"manifest {self.path} does not exist or is not a file")
        self.max_errors = max_errors
        self.kinds = {k.removeprefix("meta."): v for k, v in (field_kinds or {}).items()}
        self.errors = 0
        self.rows = 0

    def __iter__(self) -> Iterator[SourceFile | Rejected]:
        try:
            f = self.path.open("rb")
        except OSError as exc:
            raise ManifestError(f"manifest {self.path} cannot be read: {exc.strerror or exc}") from exc
        with f:
            rows = self._csv(f) if self.path.suffix.lower() in _CSV_SUFFIXES else self._jsonl(f)
            for line, row in rows:
                self.rows += 1
                item = self._item(line, row)
                if isinstance(item, Rejected):
                    self.errors += 1
                    if self.errors > self.max_errors:
                        raise ManifestError(
                            f"manifest {self.path}: more than {self.max_errors} rows could not be used "
                            f"(the last, {item.origin}: {item.reason}); stopping. Fix the manifest "
                            "(or raise --max-errors) and run again: indexed rows are not redone"
                        )
                yield item

    def count(self) -> int:
        """Rows in the manifest (for the progress bar), by counting lines."""
        with self.path.open("rb") as f:
            n = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        return max(0, n - 1) if self.path.suffix.lower() in _CSV_SUFFIXES else n

    # -- parsing ------------------------------------------------------------------------

    def _jsonl(self, f: IO[bytes]) -> Iterator[tuple[int, dict[str, Any] | str]]:
        line_no = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            line_no += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass
                yield line_no, f"line longer than {MAX_LINE_BYTES} bytes"
                continue
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                yield line_no, f"not valid JSON ({exc})"
                continue
            yield (
                line_no,
                row if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}",
            )

    def _csv(self, f: IO[bytes]) -> Iterator[tuple[int, dict[str, Any] | str]]:
        text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="replace", newline="")
        delimiter = "\t" if self.path.suffix.lower() == ".tsv" else ","
        reader = csv.DictReader(text, delimiter=delimiter)
        try:
            for row in reader:
                if None in row:
                    yield reader.line_num, "more cells than header columns"
                    continue
                yield reader.line_num, {k: v for k, v in row.items() if k and v not in (None, "")}
        except csv.Error as exc:
            yield reader.line_num, f"malformed CSV ({exc}); the rest of the file is not read"

    def _item(self, line: int, row: dict[str, Any] | str) -> SourceFile | Rejected:
        origin = f"{self.path.name}:{line}"
        if isinstance(row, str):
            return Rejected(origin, row, origin=origin)
        try:
            return self._source(row, origin)
        except _RowError as exc:
            return Rejected(str(exc.source or origin), str(exc), origin=origin)

    def _source(self, row: dict[str, Any], origin: str) -> SourceFile:
        path, text, ext_id = row.get("path"), row.get("text"), row.get("id")
        if (path is None) == (text is None):
            raise _RowError("give exactly one of `path` (a file) or `text` (inline text)")
        if ext_id is not None and (
            not isinstance(ext_id, str | int) or isinstance(ext_id, bool) or not str(ext_id)
        ):
            raise _RowError("`id` must be a non-empty string or an integer")
        metadata = self._metadata(row)
        modality = _modality(row.get("modality"))
        external_id = str(ext_id) if ext_id is not None else None
        if text is not None:
            if not isinstance(text, str) or not text.strip():
                raise _RowError("`text` must be non-empty text")
            if modality not in (None, Modality.TEXT):
                raise _RowError(f"inline text cannot have modality {modality}")
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
            data = text.encode("utf-8")
            source = f"{self.path}#{external_id if external_id is not None else digest}"
            return SourceFile(
                source,
                Modality.TEXT,
                len(data),
                0.0,
                text=text,
                metadata=metadata,
                origin=origin,
                external_id=external_id,
            )
        if not isinstance(path, str) or not path.strip():
            raise _RowError("`path` must be a non-empty string")
        file = Path(path).expanduser()
        file = (file if file.is_absolute() else self.path.parent / file).absolute()
        try:
            return SourceFile.from_path(
                file, modality=modality, metadata=metadata, origin=origin, external_id=external_id
            )
        except FileNotFoundError:
            raise _RowError(f"names a missing file: {file}", source=str(file)) from None
        except OSError as exc:
            raise _RowError(f"cannot read {file}: {exc.strerror or exc}", source=str(file)) from None
        except ValueError as exc:
            raise _RowError(str(exc), source=str(file)) from None

    def _metadata(self, row: dict[str, Any]) -> dict[str, Any]:
        meta = row.get("metadata", {})
        if isinstance(meta, str):  # a CSV cell holding JSON
            try:
                meta = json.loads(meta)
            except json.JSONDecodeError as exc:
                raise _RowError(f"`metadata` is not a JSON object ({exc})") from None
        if not isinstance(meta, dict):
            raise _RowError("`metadata` must be an object")
        merged = {**meta, **{k: v for k, v in row.items() if k not in RESERVED}}
        for key, value in list(merged.items()):
            if not key or key.startswith("meta."):
                raise _RowError(f"metadata field name {key!r} is not allowed")
            kind = self.kinds.get(key)
            if kind is not None:
                merged[key] = _typed(key, value, kind)
        size = len(json.dumps(merged, default=str))
        if size > MAX_METADATA_BYTES:
            raise _RowError(f"metadata is {size} bytes as JSON, above {MAX_METADATA_BYTES}")
        return merged


class _RowError(Exception):
    def __init__(self, message: str, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


def _modality(value: Any) -> Modality | None:
    if value is None:
        return None
    try:
        return Modality(str(value).lower())
    except ValueError:
        kinds = ", ".join(m.value for m in Modality)
        raise _RowError(f"unknown modality {value!r} (one of {kinds})") from None


def _typed(key: str, value: Any, kind: FieldKind) -> Any:
    """A declared field's value in its declared type (CSV cells arrive as strings)."""
    values = value if isinstance(value, list) else [value]
    out: list[Any] = []
    for v in values:
        try:
            if kind == FieldKind.INTEGER:
                if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                    raise ValueError
                out.append(int(v))
            elif kind == FieldKind.FLOAT:
                if isinstance(v, bool):
                    raise ValueError
                out.append(float(v))
            elif kind == FieldKind.BOOL:
                if isinstance(v, bool):
                    out.append(v)
                elif str(v).lower() in ("true", "1", "yes"):
                    out.append(True)
                elif str(v).lower() in ("false", "0", "no"):
                    out.append(False)
                else:
                    raise ValueError
            else:
                if not isinstance(v, str | int) or isinstance(v, bool):
                    raise ValueError
                out.append(v if isinstance(v, str) else str(v))
        except (TypeError, ValueError):
            raise _RowError(f"field {key!r} is declared {kind.value}, got {v!r}") from None
    return out if isinstance(value, list) else out[0]

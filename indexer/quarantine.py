"""The quarantine report: one JSON line per item the ingest set aside, with why and where.

Written as items fail (each line flushed), so the report of a run that is killed is still
complete up to that moment; created on the first line, so a clean run leaves no file.
Torch-free.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import IO, Any

from indexer.sources import ItemStatus, SourceFile, Stage


class Quarantine:
    """Appends report lines to `path`: {"path", "reason", "stage", "status", "origin", "time"}."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        self._lock = threading.Lock()
        self.lines = 0

    def add(
        self,
        source: SourceFile | str,
        reason: str,
        stage: Stage,
        status: ItemStatus,
        *,
        origin: str | None = None,
    ) -> None:
        record: dict[str, Any] = {
            "path": source.source if isinstance(source, SourceFile) else source,
            "reason": reason,
            "stage": stage.value,
            "status": status.value,
            "time": round(time.time(), 3),
        }
        origin = origin or (source.origin if isinstance(source, SourceFile) else None)
        if origin:
            record["origin"] = origin
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()
            self.lines += 1

    @property
    def written(self) -> bool:
        return self.lines > 0

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_report(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a quarantine report (for tests and tools)."""
    text = Path(path).read_text(encoding="utf-8") if Path(path).exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]

"""What to ingest: a folder's files or a manifest's rows, as one stream of sources. Torch-free.

`library_sources` is what both the local pipeline (indexer.ingest_local) and the remote ingest
client read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from indexer.manifest import DEFAULT_MAX_ERRORS, FieldKind, ManifestReader, Rejected
from indexer.sources import SourceFile, Stage
from indexer.walk import WalkStats, walk_sources


def library_sources(
    path: str | Path | None = None,
    *,
    manifest: str | Path | None = None,
    stats: WalkStats | None = None,
    max_errors: int = DEFAULT_MAX_ERRORS,
    field_kinds: Mapping[str, FieldKind] | None = None,
) -> Iterator[SourceFile | Rejected]:
    """The files under `path`, or the rows of `manifest` (exactly one of them). A folder the
    walk cannot list comes out as a Rejected item (stage walk); a bad manifest row as one
    naming its line, until ManifestError past `max_errors`."""
    if (path is None) == (manifest is None):
        raise ValueError("ingest a folder (path) or a manifest, one of the two")
    if manifest is not None:
        yield from ManifestReader(manifest, max_errors=max_errors, field_kinds=field_kinds)
        return
    assert path is not None
    stats = stats if stats is not None else WalkStats()
    reported = 0
    for src in walk_sources(path, stats):
        yield src
        while reported < len(stats.unreadable_dirs):
            folder, reason = stats.unreadable_dirs[reported]
            reported += 1
            yield Rejected(folder, f"cannot list folder: {reason}", Stage.WALK)
    for folder, reason in stats.unreadable_dirs[reported:]:
        yield Rejected(folder, f"cannot list folder: {reason}", Stage.WALK)

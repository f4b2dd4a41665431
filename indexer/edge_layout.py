"""Where an embedded store keeps its collections, and which one is live.

A data directory holds one or more collections (one per bundle a reindex built):

    <data>/shard/, <data>/mmsearch.json          the first collection, named ROOT (every store
                                                 written before reindex existed keeps this layout)
    <data>/collections/<name>/shard/, .../mmsearch.json    collections built by `mmsearch reindex`
    <data>/live.json                             {"collection": NAME}: the live one; absent: ROOT

Opening a data directory opens its live collection. The pointer is replaced atomically (a
temporary file, fsync, os.replace, fsync of the directory), so a crash leaves the old or the new
pointer, never a torn one; whoever holds the live collection's lock is the only one that moves it.
Torch-free and engine-free: plain files.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

ROOT = "."  # the collection stored in the data directory itself
COLLECTIONS_DIR = "collections"
POINTER_FILE = "live.json"
SCHEMA_FILE = "mmsearch.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class LayoutError(Exception):
    """The data directory's collection pointer is unreadable or names no collection."""


def check_name(name: str) -> str:
    if name != ROOT and not _NAME.fullmatch(name):
        raise ValueError(
            f"collection name {name[:80]!r}: 1 to 128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def collection_dir(root: str | Path, name: str) -> Path:
    """The directory of collection `name` under the data directory `root`."""
    root = Path(root)
    return root if check_name(name) == ROOT else root / COLLECTIONS_DIR / name


def live_collection(root: str | Path) -> str:
    """The name of the collection the data directory serves (ROOT when no reindex moved it)."""
    pointer = Path(root) / POINTER_FILE
    try:
        name = json.loads(pointer.read_text())["collection"]
    except FileNotFoundError:
        return ROOT
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LayoutError(f"{pointer} is unreadable ({exc}); it names the live collection") from exc
    try:
        check_name(str(name))
    except ValueError as exc:
        raise LayoutError(f"{pointer}: {exc}") from None
    if not (collection_dir(root, name) / SCHEMA_FILE).is_file():
        raise LayoutError(
            f"{pointer} names collection {name!r}, but {collection_dir(root, name)} holds none: "
            f"restore it, or point {POINTER_FILE} at a collection that exists"
        )
    return str(name)


def set_live(root: str | Path, name: str) -> None:
    """Make `name` the live collection, atomically."""
    root = Path(root)
    if not (collection_dir(root, name) / SCHEMA_FILE).is_file():
        raise LayoutError(f"collection {name!r} does not exist in {root}")
    tmp = root / f".{POINTER_FILE}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps({"collection": name}))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / POINTER_FILE)
    # The rename itself is durable only once the directory entry is.
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def collection_names(root: str | Path) -> list[str]:
    """Every collection in the data directory, ROOT first when it has one."""
    root = Path(root)
    names = [ROOT] if (root / SCHEMA_FILE).is_file() else []
    folder = root / COLLECTIONS_DIR
    if folder.is_dir():
        names += sorted(p.name for p in folder.iterdir() if (p / SCHEMA_FILE).is_file())
    return names


def read_metadata(root: str | Path, name: str) -> dict[str, object]:
    """The collection's recorded metadata (bundle_id, dim, ...); empty when it has none."""
    try:
        meta = json.loads((collection_dir(root, name) / SCHEMA_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}

"""JSONL training manifests: one pair of items a line, across any two modalities.

Two line shapes are accepted:

    {"a": {"path": "img.png", "modality": "image"}, "b": {"text": "a cat", "modality": "text"}, "group": "cat"}
    {"path": "img.png", "modality": "image", "caption": "a cat", "group": "cat"}

Paths are relative to the manifest's folder. A line that is malformed, names an unknown modality
or a missing file is reported with its line number and skipped; past `max_errors` bad lines the
load stops with ManifestError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoders.modality import Modality


class ManifestError(ValueError):
    """The manifest cannot be used (unreadable, or more bad lines than allowed)."""


@dataclass(frozen=True)
class ItemRef:
    modality: Modality
    path: Path | None = None
    text: str | None = None

    @property
    def key(self) -> str:
        return f"{self.modality}:{self.path if self.path is not None else self.text}"


@dataclass(frozen=True)
class Pair:
    a: ItemRef
    b: ItemRef
    group: str
    line: int

    @property
    def kind(self) -> tuple[Modality, Modality]:
        return (self.a.modality, self.b.modality)


@dataclass
class Manifest:
    path: Path
    pairs: list[Pair]
    errors: list[str] = field(default_factory=list)  # "line N: reason"


def _item(raw: Any, root: Path, where: str) -> ItemRef:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object")
    try:
        modality = Modality(str(raw.get("modality", "")))
    except ValueError:
        raise ValueError(f"{where}: unknown modality {raw.get('modality')!r}") from None
    if modality == Modality.TEXT:
        text = raw.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: a text item needs a non-empty 'text'")
        return ItemRef(modality, text=text)
    rel = raw.get("path")
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"{where}: a {modality} item needs a 'path'")
    path = (root / rel).resolve()
    if not path.is_file():
        raise ValueError(f"{where}: file {rel} does not exist")
    return ItemRef(modality, path=path)


def parse_line(obj: Any, root: Path, line: int) -> Pair:
    """One manifest line as a Pair. Raises ValueError with the reason."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    group = obj.get("group")
    if group is None or str(group) == "":
        raise ValueError("missing 'group'")
    if "a" in obj or "b" in obj:
        return Pair(_item(obj.get("a"), root, "a"), _item(obj.get("b"), root, "b"), str(group), line)
    caption = obj.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError("short form needs 'path', 'modality' and a non-empty 'caption'")
    a = _item({"path": obj.get("path"), "modality": obj.get("modality")}, root, "item")
    return Pair(a, ItemRef(Modality.TEXT, text=caption), str(group), line)


def load_manifest(path: str | Path, *, max_errors: int = 100) -> Manifest:
    """Parse a manifest, skipping bad lines (listed in `errors`). Raises ManifestError when the
    file cannot be read or has more than `max_errors` bad lines."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
    manifest = Manifest(path=path, pairs=[])
    for n, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            manifest.pairs.append(parse_line(json.loads(text), path.parent, n))
        except (json.JSONDecodeError, ValueError) as exc:
            reason = f"malformed JSON ({exc.msg})" if isinstance(exc, json.JSONDecodeError) else str(exc)
            manifest.errors.append(f"{path.name} line {n}: {reason}")
            if len(manifest.errors) > max_errors:
                raise ManifestError(
                    f"{path}: more than {max_errors} bad lines (error budget); first: {manifest.errors[0]}"
                ) from None
    if not manifest.pairs:
        raise ManifestError(
            f"{path}: no usable pairs" + (f" ({manifest.errors[0]})" if manifest.errors else "")
        )
    return manifest

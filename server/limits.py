"""Bounds on what one request may cost, checked before any work starts.

Every cap is a ServerConfig setting, and every refusal names the field, the cap and the setting,
so a client can act on it and an operator can raise it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from indexer.filters import FilterSpec, MatchAny
from server.config import ServerConfig
from server.errors import InvalidArgument


def check_text(text: str, *, cap: int, setting: str, where: str) -> None:
    if len(text) > cap:
        raise InvalidArgument(f"{where} has {len(text)} characters; at most {cap} ({setting})")


def check_key(key: str, where: str) -> None:
    """A payload key a client may name (filters, group keys): letters, digits, '_', '-' and '.'
    between parts. Anything else ($, NUL, newlines, brackets) is refused before the store sees it."""
    parts = key.split(".")
    if not key or not all(p and all(ch.isalnum() or ch in "_-" for ch in p) for p in parts):
        raise InvalidArgument(
            f"{where} {key[:80]!r} is not a valid field path: use letters, digits, '_' and '-', "
            "with '.' between nested fields"
        )


def check_filter(spec: FilterSpec | None, config: ServerConfig, where: str = "filter") -> None:
    if spec is None:
        return
    groups = {"must": spec.must, "must_not": spec.must_not, "should": spec.should}
    # An any_of counts each of its values: 256 conditions of 1,000 values each stalled the store.
    total = sum(len(c.values) if isinstance(c, MatchAny) else 1 for g in groups.values() for c in g)
    if total > config.max_filter_conditions:
        raise InvalidArgument(
            f"{where} has {total} conditions; at most {config.max_filter_conditions} (max_filter_conditions)"
        )
    for name, conds in groups.items():
        for i, c in enumerate(conds):
            check_key(c.key.strip(), f"{where}.{name}[{i}].key")


def check_metadata(d: Mapping[str, Any], config: ServerConfig, where: str) -> None:
    """User metadata: JSON-sized within the cap, nested at most the cap deep, finite numbers and
    printable keys (they become payload paths)."""

    def walk(value: Any, depth: int, path: str) -> None:
        if depth > config.max_metadata_depth:
            raise InvalidArgument(
                f"{where} is nested deeper than {config.max_metadata_depth} levels at {path} (max_metadata_depth)"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument(f"{where}.{path}: {value} is not a finite number")
        if isinstance(value, Mapping):
            for k, v in value.items():
                if not isinstance(k, str) or not k or not k.isprintable():
                    raise InvalidArgument(
                        f"{where}: key {str(k)[:80]!r} at {path or 'top level'} is not allowed"
                    )
                walk(v, depth + 1, f"{path}.{k}" if path else k)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, depth + 1, f"{path}[{i}]")

    walk(d, 0, "")
    size = len(json.dumps(d, allow_nan=False))
    if size > config.max_metadata_bytes:
        raise InvalidArgument(
            f"{where} is {size} bytes as JSON; at most {config.max_metadata_bytes} (max_metadata_bytes)"
        )


def check_source(source: str, config: ServerConfig, where: str) -> None:
    if len(source) > config.max_source_chars:
        raise InvalidArgument(
            f"{where} has {len(source)} characters; at most {config.max_source_chars} (max_source_chars)"
        )
    if not source.isprintable():
        raise InvalidArgument(f"{where} contains control characters (NUL, newline, ...)")

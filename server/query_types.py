"""The query inputs the services take, independent of the wire format."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueryInput:
    """One query input: exactly one of text, image / audio / video bytes, or a stored point id."""

    text: str | None = None
    image: bytes | None = None
    id: str | None = None
    audio: bytes | None = None
    video: bytes | None = None


@dataclass(frozen=True)
class MultiQuery:
    """Several weighted positive inputs and optional negatives (inputs or stored ids)."""

    positives: tuple[tuple[QueryInput, float], ...]
    negatives: tuple[tuple[QueryInput, float], ...] = ()

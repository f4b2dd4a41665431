"""Store-neutral metadata filters, validated once and translated by each store adapter."""

from __future__ import annotations

import math
from dataclasses import dataclass

from indexer.schema import META, SYSTEM_FIELDS


class FilterError(ValueError):
    """A filter is malformed; the message names the offending condition."""


@dataclass(frozen=True)
class Match:
    key: str
    value: str | int | bool


@dataclass(frozen=True)
class MatchAny:
    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Range:
    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class IsEmpty:
    """The key is absent, null or an empty list. Not a client filter (the API has no such
    condition): the default tenant's scope, whose points carry no tenant (indexer.tenancy)."""

    key: str


Condition = Match | MatchAny | Range | IsEmpty


@dataclass(frozen=True)
class FilterSpec:
    must: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()
    should: tuple[Condition, ...] = ()

    def is_empty(self) -> bool:
        return not (self.must or self.must_not or self.should)

    def and_(self, other: FilterSpec) -> FilterSpec:
        if other.should and self.should:
            # Two `should` groups would OR together; keep each group's meaning by nesting is not
            # expressible here, and no caller needs it.
            raise FilterError("cannot combine two filters that both have 'should' conditions")
        return FilterSpec(self.must + other.must, self.must_not + other.must_not, self.should + other.should)


def payload_key(key: str) -> str:
    """Map a filter key to a payload path: system fields as they are, anything else under meta."""
    if key in SYSTEM_FIELDS or key.startswith(f"{META}."):
        return key
    return f"{META}.{key}"


def validate(spec: FilterSpec, *, field_name: str = "filter") -> FilterSpec:
    """Check every condition; return the spec with keys mapped to payload paths."""

    def check(group: str, conds: tuple[Condition, ...]) -> tuple[Condition, ...]:
        out: list[Condition] = []
        for i, c in enumerate(conds):
            where = f"{field_name}.{group}[{i}]"
            key = c.key.strip()
            if not key:
                raise FilterError(f"{where}.key is empty")
            if any(ch in key for ch in "[]\"'") or key.startswith(".") or key.endswith(".") or ".." in key:
                raise FilterError(f"{where}.key {c.key!r} is not a valid field path")
            mapped = payload_key(key)
            if isinstance(c, Match):
                if isinstance(c.value, str) and not c.value:
                    raise FilterError(f"{where}: keyword match on {key!r} has an empty value")
                out.append(Match(mapped, c.value))
            elif isinstance(c, MatchAny):
                if not c.values:
                    raise FilterError(f"{where}: any_of on {key!r} lists no values")
                out.append(MatchAny(mapped, c.values))
            elif isinstance(c, IsEmpty):
                out.append(IsEmpty(mapped))
            else:
                bounds = [b for b in (c.gt, c.gte, c.lt, c.lte) if b is not None]
                if not bounds:
                    raise FilterError(f"{where}: range on {key!r} sets no bound (gt, gte, lt or lte)")
                if any(not math.isfinite(b) for b in bounds):
                    raise FilterError(f"{where}: range on {key!r} has a bound that is not a finite number")
                lower = [b for b in (c.gt, c.gte) if b is not None]
                upper = [b for b in (c.lt, c.lte) if b is not None]
                if lower and upper and max(lower) > min(upper):
                    raise FilterError(f"{where}: range on {key!r} is empty (lower bound above upper bound)")
                out.append(Range(mapped, c.gt, c.gte, c.lt, c.lte))
        return tuple(out)

    return FilterSpec(
        check("must", spec.must), check("must_not", spec.must_not), check("should", spec.should)
    )

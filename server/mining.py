"""The mining service: hard negatives for query inputs or known positives, from the index."""

from __future__ import annotations

import math
from collections.abc import Sequence

from encoders.modality import Modality
from indexer.filters import FilterSpec, payload_key
from indexer.mining import MiningParams, mine_hard_negatives
from indexer.schema import PointPayload, StoredPoint, payload_value
from server import limits, planner
from server.context import RequestContext
from server.errors import InvalidArgument
from server.planner import SearchParams
from server.queries import QueryService
from server.query_types import QueryInput


class MiningService:
    def __init__(self, queries: QueryService) -> None:
        self.queries = queries

    def mine(
        self,
        ctx: RequestContext,
        anchors: Sequence[QueryInput],
        positive_ids: Sequence[str],
        *,
        k: int,
        modalities: tuple[Modality, ...] = (),
        filter: FilterSpec | None = None,
        group_key: str = "",
        group: str = "",
        max_fraction_of_positive: float = 0.95,
        near_duplicate: float = 0.98,
    ) -> tuple[list[StoredPoint], float | None]:
        """Hard negatives for the anchors (query inputs, else the positives' own vectors)."""
        max_top_k = self.queries.config.max_top_k
        if not 1 <= k <= max_top_k:
            raise InvalidArgument(f"k must be between 1 and {max_top_k}, got {k}")
        for name, value in (
            ("max_fraction_of_positive", max_fraction_of_positive),
            ("near_duplicate", near_duplicate),
        ):
            if not (math.isfinite(value) and 0 < value <= 1):
                raise InvalidArgument(f"{name} must be in (0, 1], got {value}")
        limits.check_filter(filter, self.queries.config)
        if group_key:
            limits.check_key(group_key, "group_key")
        if not anchors and not positive_ids:
            raise InvalidArgument("give queries or positive_ids: mining needs an anchor")
        spec = planner.check_params(SearchParams(top_k=k, modalities=modalities, filter=filter), max_top_k)
        ids = self.queries.ids
        positives = (
            ids.get(ctx, positive_ids, field="positive_ids", with_vectors=True) if positive_ids else []
        )
        encoded = self.queries.encode(ctx, anchors, [f"queries[{i}]" for i in range(len(anchors))])
        vectors = [e.vector for e in encoded] or [p.vector for p in positives if p.vector is not None]
        key = payload_key(group_key) if group_key else None
        if key and not group and positives:
            values = {str(payload_value(p.payload, key)) for p in positives}
            group = values.pop() if len(values) == 1 else ""
        best = None
        if positives:
            best = max(float(v @ p.vector) for v in vectors for p in positives if p.vector is not None)
        params = MiningParams(
            k=k,
            max_fraction_of_positive=max_fraction_of_positive,
            near_duplicate=near_duplicate,
            group_key=key,
        )
        found: dict[str, StoredPoint] = {}
        for v in vectors:
            ctx.check()
            for h in mine_hard_negatives(
                self.queries.store_for(ctx),
                v,
                params=params,
                positive_score=best,
                group=group or None,
                filter=spec,
                exclude_ids=[p.id for p in positives],
                exclude_content_hashes=[PointPayload.from_dict(p.payload).content_hash for p in positives],
            ):
                if h.id not in found or h.score > found[h.id].score:
                    found[h.id] = h
        return sorted(found.values(), key=lambda h: h.score, reverse=True)[:k], best

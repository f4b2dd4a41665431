"""The query service: query inputs -> vectors (the one embedding path) -> the query pipeline."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from encoders.calibration import Calibration
from encoders.embed import Embedder, Failure
from encoders.inputs import AudioInput, EmbedInput, ImageInput, TextInput, VideoInput
from encoders.modality import Modality
from indexer.schema import PointPayload, StoredPoint, StoreInfo
from indexer.store import VectorStore
from indexer.tenancy import DEFAULT_TENANT, tenant_store
from server import limits, planner
from server.config import ServerConfig
from server.context import RequestContext
from server.errors import InvalidArgument, NotFound
from server.ids import IdResolver
from server.planner import Plan, SearchOutcome, SearchParams, Weighted
from server.query_types import MultiQuery, QueryInput


@dataclass(frozen=True)
class EncodedQuery:
    vector: np.ndarray
    modality: Modality
    exclude_ids: tuple[str, ...] = ()


class QueryService:
    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        ids: IdResolver,
        config: ServerConfig,
        calibration: Calibration | None = None,
        *,
        scope_default: bool = True,
    ) -> None:
        self.embedder = embedder
        self.store = store
        self.ids = ids
        self.config = config
        self.calibration = calibration or embedder.encoder.bundle.calibration
        # False only where no point can belong to another tenant (server.services.build_services):
        # then the default tenant's scope would match every point and only slow queries down.
        self.scope_default = scope_default

    @property
    def bundle_id(self) -> str:
        return self.embedder.encoder.bundle.bundle_id

    # -- encoding ---------------------------------------------------------------------------

    def encode(
        self, ctx: RequestContext, queries: Sequence[QueryInput], fields: Sequence[str]
    ) -> list[EncodedQuery]:
        """Vectors for query inputs: media and text in one batched pass, ids from the store."""
        inputs: dict[int, EmbedInput] = {}
        out: dict[int, EncodedQuery] = {}
        for i, (q, where) in enumerate(zip(queries, fields, strict=True)):
            if q.id is not None:
                point = self.ids.get_one(ctx, q.id, field=f"{where}.id")
                if point.vector is None:
                    raise NotFound(f"{where}.id: point {q.id} has no stored vector")
                modality = Modality(PointPayload.from_dict(point.payload).modality or Modality.TEXT)
                out[i] = EncodedQuery(point.vector, modality, (point.id,))
            else:
                inputs[i] = self._embed_input(q, where)
        if inputs:
            ctx.check()
            embedded = self.embedder.embed(
                list(inputs.values()), check=ctx.check, time_left=ctx.remaining, video_audio=False
            )
            ctx.check()  # a decode stopped by the deadline is the deadline's failure, not the input's
            for i, emb in zip(inputs, embedded, strict=True):
                if isinstance(emb, Failure):
                    raise InvalidArgument(emb.error)
                out[i] = EncodedQuery(emb.pooled, emb.modality)
        return [out[i] for i in range(len(queries))]

    def embed(self, ctx: RequestContext, inputs: Sequence[QueryInput]) -> list[EncodedQuery]:
        if not inputs:
            raise InvalidArgument("inputs is empty")
        if len(inputs) > self.config.max_batch_items:
            raise InvalidArgument(f"inputs has {len(inputs)} entries; at most {self.config.max_batch_items}")
        return self.encode(ctx, inputs, [f"inputs[{i}]" for i in range(len(inputs))])

    # -- queries ----------------------------------------------------------------------------

    def search(
        self, ctx: RequestContext, query: QueryInput | MultiQuery, params: SearchParams
    ) -> SearchOutcome:
        """Validate the parameters (before spending time on encoding), encode, run the pipeline."""
        limits.check_filter(params.filter, self.config)
        spec = planner.check_params(params, self.config.max_top_k)
        start = time.perf_counter()
        plan = self._plan(ctx, query, params)
        encode_ms = (time.perf_counter() - start) * 1e3
        ctx.check()
        outcome = planner.run(self.store_for(ctx), plan, params, spec, self.calibration, check=ctx.check)
        outcome.stage_ms["encode"] = encode_ms
        return outcome

    def recommend(
        self,
        ctx: RequestContext,
        positive_ids: Sequence[str],
        negative_ids: Sequence[str],
        params: SearchParams,
    ) -> SearchOutcome:
        """Like the positive stored points, unlike the negative ones (ids or caller ids)."""
        if not positive_ids:
            raise InvalidArgument("positive_ids is empty: recommend needs at least one positive")
        query = MultiQuery(
            tuple((QueryInput(id=i), 1.0) for i in positive_ids),
            tuple((QueryInput(id=i), 1.0) for i in negative_ids),
        )
        return self.search(ctx, query, params)

    def get(
        self, ctx: RequestContext, ids: Sequence[str], *, with_vectors: bool = False
    ) -> list[StoredPoint]:
        return self.ids.get(ctx, ids, field="ids", with_vectors=with_vectors)

    def stats(self, ctx: RequestContext) -> StoreInfo:
        ctx.check()
        return self.store_for(ctx).info()

    def store_for(self, ctx: RequestContext) -> VectorStore:
        """The store as the caller's tenant sees it: every read is scoped to that tenant."""
        if ctx.tenant == DEFAULT_TENANT and not self.scope_default:
            return self.store
        return tenant_store(self.store, ctx.tenant)

    def _plan(self, ctx: RequestContext, query: QueryInput | MultiQuery, params: SearchParams) -> Plan:
        single = isinstance(query, QueryInput)
        multi = MultiQuery(((query, 1.0),)) if isinstance(query, QueryInput) else query
        if not multi.positives:
            what = "a negative-only query has nothing to rank by" if multi.negatives else "no query input"
            raise InvalidArgument(f"positives is empty: give query or at least one positive ({what})")
        if multi.negatives and params.fusion == "rrf":
            raise InvalidArgument("negatives cannot be combined with fusion RRF: use the default fusion")
        weights = [
            planner.check_weight(w, "query" if single else f"positives[{i}]")
            for i, (_, w) in enumerate(multi.positives)
        ]
        for i, (_, w) in enumerate(multi.negatives):
            planner.check_weight(w, f"negatives[{i}]")
        fields = ["query" if single else f"positives[{i}].input" for i in range(len(multi.positives))]
        fields += [f"negatives[{i}].input" for i in range(len(multi.negatives))]
        encoded = self.encode(ctx, [q for q, _ in multi.positives] + [q for q, _ in multi.negatives], fields)
        pos, neg = encoded[: len(multi.positives)], encoded[len(multi.positives) :]
        exclude = [i for e in encoded for i in e.exclude_ids]
        return Plan(
            [Weighted(e.vector, e.modality, w) for e, w in zip(pos, weights, strict=True)],
            [e.vector for e in neg],
            tuple(dict.fromkeys(exclude)),
        )

    def _embed_input(self, q: QueryInput, where: str) -> EmbedInput:
        if q.text is not None:
            if not q.text.strip():
                raise InvalidArgument(f"{where}.text is empty")
            cap = self.config.max_query_text_chars
            limits.check_text(q.text, cap=cap, setting="max_query_text_chars", where=f"{where}.text")
            return TextInput(q.text, f"{where}.text")
        if q.image is not None:
            return ImageInput(q.image, f"{where}.image")
        if q.audio is not None:
            return AudioInput(q.audio, f"{where}.audio")
        if q.video is not None:
            return VideoInput(q.video, f"{where}.video")
        raise InvalidArgument(f"{where} is empty: set text, image, audio, video or id")

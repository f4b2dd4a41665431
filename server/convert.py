"""Pure conversions between protobuf messages and the services' types (no I/O, no state)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import json_format, struct_pb2

from encoders.modality import Modality
from indexer.filters import Condition, FilterError, FilterSpec, IsEmpty, Match, MatchAny, Range
from indexer.inputs import ItemInput
from indexer.schema import AUDIO_TRACK, VISUAL_TRACK, Key, PointPayload, StoredPoint
from indexer.store import Stages
from mmsearch.v1 import search_pb2 as pb
from server.errors import InvalidArgument
from server.planner import DEFAULT_STAGES, SearchParams
from server.query_types import MultiQuery, QueryInput

_TO_PROTO = {
    Modality.TEXT: pb.MODALITY_TEXT,
    Modality.IMAGE: pb.MODALITY_IMAGE,
    Modality.AUDIO: pb.MODALITY_AUDIO,
    Modality.VIDEO: pb.MODALITY_VIDEO,
}
_FROM_PROTO = {v: k for k, v in _TO_PROTO.items()}
# Payload keys that have their own SearchHit field; the rest of the system payload goes to attributes.
_HIT_FIELDS = frozenset(
    {
        Key.MODALITY,
        Key.SOURCE,
        Key.MEDIA_ID,
        Key.SEGMENT,
        Key.TEXT,
        Key.META,
        Key.T_START,
        Key.T_END,
        Key.TRACK,
        Key.POOLED,
        Key.POINT_IDS,
    }
)
_TRACKS = {VISUAL_TRACK: pb.TRACK_VISUAL, AUDIO_TRACK: pb.TRACK_AUDIO}
_TRACK_NAMES = {v: k for k, v in _TRACKS.items()}
# System attributes typed int in PointPayload; a Struct brings every number back as a float.
_INT_ATTRIBUTES = frozenset({Key.SEGMENTS, Key.CHAR_START, Key.CHAR_END, Key.WIDTH, Key.HEIGHT})


def modality_to_proto(m: Modality) -> pb.Modality:
    return _TO_PROTO[m]


def modality_from_proto(value: int, *, field: str) -> Modality:
    try:
        return _FROM_PROTO[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(f"{field}: modality must be TEXT, IMAGE, AUDIO or VIDEO, got {value}") from None


def query_from_proto(q: pb.QueryInput, *, field: str = "query") -> QueryInput:
    kind = q.WhichOneof("input")
    if kind == "text":
        return QueryInput(text=q.text)
    if kind == "image":
        return QueryInput(image=q.image)
    if kind == "id":
        if not q.id:
            raise InvalidArgument(f"{field}.id is empty")
        return QueryInput(id=q.id)
    if kind == "audio":
        return QueryInput(audio=q.audio)
    if kind == "video":
        return QueryInput(video=q.video)
    raise InvalidArgument(f"{field} is empty: set text, image, audio, video or id")


def query_to_proto(q: QueryInput) -> pb.QueryInput:
    """The inverse of query_from_proto; an input with nothing set gives an empty message."""
    if q.text is not None:
        return pb.QueryInput(text=q.text)
    if q.image is not None:
        return pb.QueryInput(image=q.image)
    if q.id is not None:
        return pb.QueryInput(id=q.id)
    if q.audio is not None:
        return pb.QueryInput(audio=q.audio)
    if q.video is not None:
        return pb.QueryInput(video=q.video)
    return pb.QueryInput()


def _condition_from_proto(c: pb.Condition, where: str) -> Condition:
    kind = c.WhichOneof("match")
    if kind == "keyword":
        return Match(c.key, c.keyword)
    if kind == "integer":
        return Match(c.key, c.integer)
    if kind == "boolean":
        return Match(c.key, c.boolean)
    if kind == "any_of":
        return MatchAny(c.key, tuple(c.any_of.values))
    if kind == "range":
        r = c.range
        return Range(
            c.key,
            gt=r.gt if r.HasField("gt") else None,
            gte=r.gte if r.HasField("gte") else None,
            lt=r.lt if r.HasField("lt") else None,
            lte=r.lte if r.HasField("lte") else None,
        )
    raise FilterError(f"{where} on {c.key[:80]!r} sets no match (keyword, integer, boolean, any_of or range)")


def filter_from_proto(f: pb.Filter, *, field: str = "filter") -> FilterSpec:
    def group(name: str, conds: Any) -> tuple[Condition, ...]:
        return tuple(_condition_from_proto(c, f"{field}.{name}[{i}]") for i, c in enumerate(conds))

    try:
        return FilterSpec(group("must", f.must), group("must_not", f.must_not), group("should", f.should))
    except FilterError as exc:
        raise InvalidArgument(str(exc)) from exc


def _condition_to_proto(c: Condition) -> pb.Condition:
    if isinstance(c, MatchAny):
        return pb.Condition(key=c.key, any_of=pb.KeywordList(values=c.values))
    if isinstance(c, Range):
        out = pb.Condition(key=c.key)
        out.range.SetInParent()  # a range without bounds is still a range (validation refuses it)
        for bound in ("gt", "gte", "lt", "lte"):
            if (value := getattr(c, bound)) is not None:
                setattr(out.range, bound, value)
        return out
    if isinstance(c, IsEmpty):
        # Only the tenant scope uses it, added inside the store wrapper after every conversion.
        raise TypeError(f"is-empty on {c.key!r} is a server-side scope condition with no wire form")
    if isinstance(c.value, bool):  # before int: a bool is an int
        return pb.Condition(key=c.key, boolean=c.value)
    if isinstance(c.value, int):
        return pb.Condition(key=c.key, integer=c.value)
    return pb.Condition(key=c.key, keyword=c.value)


def filter_to_proto(spec: FilterSpec) -> pb.Filter:
    """The inverse of filter_from_proto."""
    return pb.Filter(
        must=[_condition_to_proto(c) for c in spec.must],
        must_not=[_condition_to_proto(c) for c in spec.must_not],
        should=[_condition_to_proto(c) for c in spec.should],
    )


def struct_from_dict(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def struct_to_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(s)


def hit_to_proto(p: StoredPoint) -> pb.SearchHit:
    payload = PointPayload.from_dict(p.payload)
    modality = _TO_PROTO.get(Modality(payload.modality)) if payload.modality else None
    return pb.SearchHit(
        id=p.id,
        score=p.score,
        modality=modality or pb.MODALITY_UNSPECIFIED,
        source=payload.source,
        media_id=payload.media_id,
        segment=payload.segment,
        text=payload.text or "",
        metadata=struct_from_dict(payload.meta),
        attributes=struct_from_dict({k: v for k, v in p.payload.items() if k not in _HIT_FIELDS}),
        t_start=payload.t_start,
        t_end=payload.t_end,
        track=_TRACKS.get(payload.track or "", pb.TRACK_UNSPECIFIED),
        pooled=bool(payload.pooled),
        calibrated_score=p.calibrated if p.calibrated is not None else 0.0,
    )


def hit_from_proto(hit: pb.SearchHit) -> StoredPoint:
    """The inverse of hit_to_proto, as far as a hit carries it: the payload's `point_ids` are not
    sent, a calibrated score of 0 reads as 0.0 (not None), `pooled` is kept for time ranges (where
    the payload always has it) and for True, and user metadata numbers come back as floats."""
    payload: dict[str, Any] = struct_to_dict(hit.attributes)
    for key in _INT_ATTRIBUTES & payload.keys():
        if isinstance(payload[key], float) and payload[key].is_integer():
            payload[key] = int(payload[key])
    modality = _FROM_PROTO.get(hit.modality)
    payload[Key.MODALITY] = modality.value if modality else ""
    payload.update({Key.SOURCE: hit.source, Key.MEDIA_ID: hit.media_id, Key.SEGMENT: hit.segment})
    payload[Key.META] = struct_to_dict(hit.metadata)
    if hit.text:
        payload[Key.TEXT] = hit.text
    if hit.HasField("t_start"):
        payload[Key.T_START] = hit.t_start
    if hit.HasField("t_end"):
        payload[Key.T_END] = hit.t_end
    if hit.track in _TRACK_NAMES:
        payload[Key.TRACK] = _TRACK_NAMES[hit.track]
    if hit.pooled or hit.HasField("t_start"):
        payload[Key.POOLED] = hit.pooled
    return StoredPoint(id=hit.id, payload=payload, score=hit.score, calibrated=hit.calibrated_score)


def item_from_proto(item: pb.Item, index: int) -> ItemInput:
    kind = item.WhichOneof("content")
    field = f"items[{index}]"
    try:
        metadata = struct_to_dict(item.metadata)
        attributes = struct_to_dict(item.attributes)
    except ValueError as exc:  # protobuf refuses NaN / infinity in a Struct as JSON
        raise InvalidArgument(f"{field}.metadata: a value is not a finite number ({exc})") from exc
    if kind == "text":
        return ItemInput(Modality.TEXT, item.text, item.source, item.id or None, metadata, attributes)
    if kind in ("image", "audio", "video"):
        data = getattr(item, kind)
        return ItemInput(Modality(kind), data, item.source, item.id or None, metadata, attributes)
    raise InvalidArgument(f"{field} has no content: set text, image, audio or video")


def item_to_proto(item: ItemInput) -> pb.Item:
    """The inverse of item_from_proto. Raises TypeError for content of the wrong type, a Path
    included: converting does no I/O, so read the file first."""
    out = pb.Item(
        id=item.id or "",
        source=item.source,
        metadata=struct_from_dict(item.metadata),
        attributes=struct_from_dict(item.attributes),
    )
    data = item.data
    if item.modality is Modality.TEXT:
        if not isinstance(data, str):
            raise TypeError(f"a text item holds a str, got {type(data).__name__}")
        out.text = data
    elif isinstance(data, bytes):
        setattr(out, item.modality.value, data)
    else:
        raise TypeError(f"a {item.modality} item holds bytes, got {type(data).__name__}")
    return out


def search_query_from_proto(request: pb.SearchRequest) -> QueryInput | MultiQuery:
    """`query`, or the weighted `positives` and `negatives` (not both)."""
    multi = bool(request.positives or request.negatives)
    if request.HasField("query") and multi:
        raise InvalidArgument("set either query or positives/negatives, not both")
    if request.HasField("query"):
        return query_from_proto(request.query)
    if not multi:
        raise InvalidArgument("query is required (or positives)")

    def weighted(items: Any, name: str) -> tuple[tuple[QueryInput, float], ...]:
        return tuple(
            (query_from_proto(w.input, field=f"{name}[{i}].input"), float(w.weight))
            for i, w in enumerate(items)
        )

    return MultiQuery(weighted(request.positives, "positives"), weighted(request.negatives, "negatives"))


def stages_from_proto(st: pb.SearchStages) -> tuple[Stages, bool]:
    """The dense query's stages and whether video segments are frame re-scored."""
    d = DEFAULT_STAGES
    stages = Stages(
        oversampling=st.oversampling if st.HasField("oversampling") else d.oversampling,
        quantized=st.quantized if st.HasField("quantized") else d.quantized,
        exact_rescore=st.exact_rescore if st.HasField("exact_rescore") else d.exact_rescore,
        mmr_lambda=st.mmr_lambda if st.HasField("mmr_lambda") else d.mmr_lambda,
    )
    return stages, st.frames_rescore if st.HasField("frames_rescore") else True


def stages_to_proto(stages: Stages, frames_rescore: bool = True) -> pb.SearchStages:
    """The inverse of stages_from_proto: every field set, so no server default applies."""
    return pb.SearchStages(
        oversampling=stages.oversampling,
        quantized=stages.quantized,
        exact_rescore=stages.exact_rescore,
        frames_rescore=frames_rescore,
        mmr_lambda=stages.mmr_lambda,
    )


def modalities_from_proto(values: Iterable[int]) -> tuple[Modality, ...]:
    return tuple(modality_from_proto(m, field=f"modalities[{i}]") for i, m in enumerate(values))


def modalities_to_proto(modalities: Iterable[Modality]) -> list[pb.Modality]:
    return [modality_to_proto(m) for m in modalities]


def search_params_from_proto(request: pb.SearchRequest | pb.RecommendRequest) -> SearchParams:
    modalities = modalities_from_proto(request.modalities)
    common: dict[str, Any] = {
        "top_k": request.top_k,
        "modalities": modalities,
        "filter": filter_from_proto(request.filter) if request.HasField("filter") else None,
        "group_size": request.group_size or 1,
    }
    if isinstance(request, pb.RecommendRequest):
        return SearchParams(**common)
    stages, frames = stages_from_proto(request.stages)
    return SearchParams(
        **common,
        score_threshold=request.score_threshold if request.HasField("score_threshold") else None,
        calibrated_threshold=request.calibrated_threshold
        if request.HasField("calibrated_threshold")
        else None,
        stages=stages,
        frames_rescore=frames,
        fusion="rrf" if request.fusion == pb.FUSION_RRF else "mean",
    )


def _weighted_to_proto(inputs: Sequence[tuple[QueryInput, float]]) -> list[pb.WeightedInput]:
    return [pb.WeightedInput(input=query_to_proto(q), weight=w) for q, w in inputs]


def search_request_to_proto(query: QueryInput | MultiQuery, params: SearchParams) -> pb.SearchRequest:
    """The inverse of search_query_from_proto and search_params_from_proto together. Floats
    travel as float32 (thresholds, stage options, weights)."""
    request = pb.SearchRequest(
        top_k=params.top_k,
        modalities=modalities_to_proto(params.modalities),
        score_threshold=params.score_threshold,
        group_size=params.group_size,
        fusion=pb.FUSION_RRF if params.fusion == "rrf" else pb.FUSION_UNSPECIFIED,
        stages=stages_to_proto(params.stages, params.frames_rescore),
        calibrated_threshold=params.calibrated_threshold,
    )
    if params.filter is not None:
        request.filter.SetInParent()  # an empty filter is still a filter
        request.filter.MergeFrom(filter_to_proto(params.filter))
    if isinstance(query, QueryInput):
        request.query.SetInParent()
        request.query.MergeFrom(query_to_proto(query))
    else:
        request.positives.extend(_weighted_to_proto(query.positives))
        request.negatives.extend(_weighted_to_proto(query.negatives))
    return request

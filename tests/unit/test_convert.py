"""Round trips through every proto converter in server.convert: internal value -> message ->
internal value (or the other way) gives back what went in, up to what the wire format keeps
(float32 fields, Struct numbers as doubles)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encoders.modality import Modality
from indexer.filters import Condition, FilterSpec, Match, MatchAny, Range
from indexer.inputs import ItemInput
from indexer.schema import PointPayload, StoredPoint
from indexer.store import Stages
from mmsearch.v1 import search_pb2 as pb
from server import convert
from server.errors import InvalidArgument
from server.planner import DEFAULT_STAGES, SearchParams
from server.query_types import MultiQuery, QueryInput

fast = settings(max_examples=40, deadline=None, database=None)

# -- strategies -----------------------------------------------------------------------------

f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)  # what a proto `float` keeps
f64 = st.floats(allow_nan=False, allow_infinity=False)
text = st.text(max_size=12)
modalities = st.sampled_from(list(Modality))

queries = st.one_of(
    st.builds(QueryInput, text=text),
    st.builds(QueryInput, image=st.binary(max_size=16)),
    st.builds(QueryInput, id=st.text(min_size=1, max_size=12)),
    st.builds(QueryInput, audio=st.binary(max_size=16)),
    st.builds(QueryInput, video=st.binary(max_size=16)),
)
conditions: st.SearchStrategy[Condition] = st.one_of(
    st.builds(Match, text, text),
    st.builds(Match, text, st.integers(-(2**63), 2**63 - 1)),
    st.builds(Match, text, st.booleans()),
    st.builds(MatchAny, text, st.lists(text, max_size=3).map(tuple)),
    st.builds(Range, text, *(st.none() | f64 for _ in range(4))),
)
groups = st.lists(conditions, max_size=3).map(tuple)
filters = st.builds(FilterSpec, groups, groups, groups)
stages = st.builds(Stages, f32, st.booleans(), st.booleans(), st.none() | f32)
params = st.builds(
    SearchParams,
    top_k=st.integers(0, 2**32 - 1),
    modalities=st.lists(modalities, max_size=4).map(tuple),
    filter=st.none() | filters,
    score_threshold=st.none() | f32,
    group_size=st.integers(1, 2**32 - 1),  # 0 on the wire means 1
    stages=stages,
    frames_rescore=st.booleans(),
    fusion=st.sampled_from(["mean", "rrf"]),
    calibrated_threshold=st.none() | f32,
)
weighted = st.lists(st.tuples(queries, f32), max_size=3).map(tuple)
multi_queries = st.builds(MultiQuery, weighted.filter(bool), weighted)

json_leaf = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | f64 | text
json_values = st.recursive(
    json_leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(text, kids, max_size=3), max_leaves=6
)
json_dicts = st.dictionaries(text, json_values, max_size=4)


@st.composite
def items(draw: st.DrawFn) -> ItemInput:
    modality = draw(modalities)
    data = draw(text) if modality is Modality.TEXT else draw(st.binary(max_size=16))
    item_id = draw(st.none() | st.text(min_size=1, max_size=12))  # "" on the wire means none
    return ItemInput(modality, data, draw(text), item_id, draw(json_dicts), draw(json_dicts))


@st.composite
def stored_points(draw: st.DrawFn) -> StoredPoint:
    timed = draw(st.booleans())  # audio windows and video segments carry a time range and a track
    small = st.integers(0, 2**31)
    payload = PointPayload(
        modality=draw(st.sampled_from(["", *(m.value for m in Modality)])),
        source=draw(text),
        content_hash=draw(text),
        media_id=draw(text),
        bundle_id=draw(text),
        meta=draw(json_dicts),
        tenant=draw(st.none() | text),
        external_id=draw(st.none() | text),
        size=draw(st.none() | f64),
        mtime=draw(st.none() | f64),
        segment=draw(st.integers(0, 2**32 - 1)),
        segments=draw(small),
        text=draw(st.none() | st.text(min_size=1, max_size=12)),
        char_start=draw(st.none() | small),
        char_end=draw(st.none() | small),
        width=draw(st.none() | small),
        height=draw(st.none() | small),
        track=draw(st.sampled_from(["visual", "audio"])) if timed else None,
        t_start=draw(f64) if timed else None,
        t_end=draw(f64) if timed else None,
        pooled=draw(st.booleans()) if timed else None,
        duration=draw(st.none() | f64),
        frame_times=draw(st.none() | st.lists(f64, max_size=3)),
        point_ids=draw(st.none() | st.lists(text, max_size=3)),
    )
    calibrated = draw(st.none() | f32)
    return StoredPoint(draw(text), payload.to_dict(), draw(f32), calibrated=calibrated)


# -- helpers --------------------------------------------------------------------------------


def as_struct(value: Any) -> Any:
    """`value` as a Struct gives it back: every number a float, bools and the rest as they are."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {k: as_struct(v) for k, v in value.items()}
    return [as_struct(v) for v in value]


def same_json(a: Any, b: Any) -> bool:
    """Equal with types: True != 1.0 and 1 != 1.0 here, unlike ==."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("modality", list(Modality))
def test_modality(modality: Modality) -> None:
    assert convert.modality_from_proto(convert.modality_to_proto(modality), field="m") is modality
    assert convert.modalities_from_proto(convert.modalities_to_proto([modality, modality])) == (modality,) * 2


def test_modality_unspecified_or_unknown_is_invalid_argument() -> None:
    for value in (pb.MODALITY_UNSPECIFIED, 99):
        with pytest.raises(InvalidArgument, match=r"modalities\[1\]"):
            convert.modalities_from_proto([pb.MODALITY_TEXT, value])


@fast
@given(queries)
def test_query_input(q: QueryInput) -> None:
    assert convert.query_from_proto(convert.query_to_proto(q)) == q


def test_empty_query_input_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="query is empty"):
        convert.query_from_proto(convert.query_to_proto(QueryInput()))
    with pytest.raises(InvalidArgument, match=r"positives\[0\]\.input\.id is empty"):
        convert.query_from_proto(pb.QueryInput(id=""), field="positives[0].input")


@fast
@given(filters)
def test_filter(spec: FilterSpec) -> None:
    # repr, not ==: a dataclass compares True == 1 and would hide a boolean read as an integer.
    assert repr(convert.filter_from_proto(convert.filter_to_proto(spec))) == repr(spec)


@pytest.mark.parametrize("group", ["must", "must_not", "should"])
@pytest.mark.parametrize(
    "condition",
    [
        Match("color", "red"),
        Match("year", -(2**63)),
        Match("year", 2**63 - 1),
        Match("public", True),
        Match("public", False),
        Match("count", 0),
        MatchAny("tag", ("a", "b")),
        MatchAny("tag", ()),
    ],
    ids=repr,
)
def test_every_match_kind_in_every_group(group: str, condition: Match | MatchAny) -> None:
    spec = FilterSpec(**{group: (condition,)})
    message = convert.filter_to_proto(spec)
    kind = {bool: "boolean", int: "integer", str: "keyword"}
    want = "any_of" if isinstance(condition, MatchAny) else kind[type(condition.value)]
    assert getattr(message, group)[0].WhichOneof("match") == want
    assert repr(convert.filter_from_proto(message)) == repr(spec)


def test_range_with_every_combination_of_bounds() -> None:
    for bounds in itertools.product([None, 1.5], [None, -2.0], [None, 1e300], [None, 0.0]):
        spec = FilterSpec(must=(Range("rating", *bounds),))
        message = convert.filter_to_proto(spec)
        assert message.must[0].WhichOneof("match") == "range"
        assert repr(convert.filter_from_proto(message)) == repr(spec)


def test_condition_without_a_match_is_invalid_argument_naming_it() -> None:
    message = pb.Filter(must=[pb.Condition(key="a", keyword="x")], should=[pb.Condition(key="b")])
    with pytest.raises(InvalidArgument, match=r"filter\.should\[0\] on 'b'"):
        convert.filter_from_proto(message)


@fast
@given(json_dicts)
def test_struct(d: dict[str, Any]) -> None:
    back = convert.struct_to_dict(convert.struct_from_dict(d))
    assert same_json(back, as_struct(d))


def test_struct_keeps_bools_and_nesting_but_makes_ints_floats() -> None:
    d = {"n": 3, "flag": True, "nested": {"list": [1, "x", None, False, {"deep": 2.5}]}, "none": None}
    back = convert.struct_to_dict(convert.struct_from_dict(d))
    assert same_json(
        back,
        {"n": 3.0, "flag": True, "nested": {"list": [1.0, "x", None, False, {"deep": 2.5}]}, "none": None},
    )
    assert type(back["n"]) is float and back["flag"] is True


@fast
@given(items())
def test_item(item: ItemInput) -> None:
    back = convert.item_from_proto(convert.item_to_proto(item), 0)
    assert (back.modality, back.data, back.source, back.id) == (
        item.modality,
        item.data,
        item.source,
        item.id,
    )
    assert same_json(back.metadata, as_struct(item.metadata))
    assert same_json(back.attributes, as_struct(item.attributes))


def test_item_edge_cases(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="bytes"):
        convert.item_to_proto(ItemInput(Modality.VIDEO, tmp_path / "v.mp4"))
    with pytest.raises(TypeError, match="str"):
        convert.item_to_proto(ItemInput(Modality.TEXT, b"bytes"))
    with pytest.raises(InvalidArgument, match=r"items\[4\] has no content"):
        convert.item_from_proto(pb.Item(source="x"), 4)
    nan = pb.Item(text="t")
    nan.metadata.update({"x": float("nan")})
    with pytest.raises(InvalidArgument, match=r"items\[2\]\.metadata"):
        convert.item_from_proto(nan, 2)


@fast
@given(stored_points())
def test_hit(point: StoredPoint) -> None:
    message = convert.hit_to_proto(point)
    back = convert.hit_from_proto(message)
    assert back.id == point.id
    assert back.score == np.float32(point.score)
    assert back.calibrated == (np.float32(point.calibrated) if point.calibrated is not None else 0.0)
    # Everything in the payload travels except point_ids; user metadata numbers come back floats.
    want = {k: v for k, v in point.payload.items() if k != "point_ids"}
    want["meta"] = as_struct(want["meta"])
    assert same_json(back.payload, want)
    assert convert.hit_to_proto(back) == message  # and the message survives the way back


def test_hit_of_a_video_segment() -> None:
    payload = PointPayload(
        modality="video",
        source="v.mp4",
        content_hash="h",
        media_id="m",
        bundle_id="b",
        meta={"rating": 4, "tags": ["a"], "public": True},
        external_id="clip-1",
        segment=2,
        segments=3,
        width=96,
        height=80,
        track="visual",
        t_start=10.0,
        t_end=15.0,
        pooled=False,
        frame_times=[10.0, 11.0],
        point_ids=["p1", "p2"],
    )
    hit = convert.hit_to_proto(StoredPoint("id-1", payload.to_dict(), 0.75, calibrated=0.5))
    assert (hit.track, hit.t_start, hit.t_end, hit.pooled) == (pb.TRACK_VISUAL, 10.0, 15.0, False)
    assert "point_ids" not in hit.attributes and hit.attributes["external_id"] == "clip-1"
    back = convert.hit_from_proto(hit)
    assert back.payload["width"] == 96 and type(back.payload["width"]) is int
    assert back.payload["meta"]["rating"] == 4.0 and back.payload["meta"]["public"] is True
    assert back.payload["pooled"] is False and back.calibrated == 0.5


@fast
@given(stages, st.booleans())
def test_stages(st_: Stages, frames: bool) -> None:
    assert convert.stages_from_proto(convert.stages_to_proto(st_, frames)) == (st_, frames)


@pytest.mark.parametrize(
    ("message", "want"),
    [
        (pb.SearchStages(), (DEFAULT_STAGES, True)),
        (pb.SearchStages(oversampling=2), (Stages(2, False, True, None), True)),
        (pb.SearchStages(quantized=True), (Stages(4, True, True, None), True)),
        (pb.SearchStages(exact_rescore=False), (Stages(4, False, False, None), True)),
        (pb.SearchStages(frames_rescore=False), (DEFAULT_STAGES, False)),
        (pb.SearchStages(mmr_lambda=0.0), (Stages(4, False, True, 0.0), True)),
        (pb.SearchStages(mmr_lambda=0.5), (Stages(4, False, True, 0.5), True)),
    ],
)
def test_unset_stage_options_take_the_defaults(message: pb.SearchStages, want: tuple[Stages, bool]) -> None:
    got = convert.stages_from_proto(message)
    assert got == want
    assert convert.stages_from_proto(convert.stages_to_proto(*got)) == got


@fast
@given(queries | multi_queries, params)
def test_search_request(query: QueryInput | MultiQuery, p: SearchParams) -> None:
    request = convert.search_request_to_proto(query, p)
    assert convert.search_query_from_proto(request) == query
    assert repr(convert.search_params_from_proto(request)) == repr(p)
    # A RecommendRequest carries the common fields; the rest take their defaults.
    rec = pb.RecommendRequest(
        top_k=request.top_k, modalities=request.modalities, group_size=request.group_size, positive_ids=["a"]
    )
    if request.HasField("filter"):
        rec.filter.CopyFrom(request.filter)
    want = SearchParams(top_k=p.top_k, modalities=p.modalities, filter=p.filter, group_size=p.group_size)
    assert repr(convert.search_params_from_proto(rec)) == repr(want)


def test_search_request_defaults_and_weights() -> None:
    request = pb.SearchRequest(query=pb.QueryInput(text="a"), top_k=3)
    assert convert.search_params_from_proto(request) == SearchParams(top_k=3)  # group_size 0 means 1
    both = pb.SearchRequest(
        positives=[pb.WeightedInput(input=pb.QueryInput(text="a"), weight=2.5)],
        negatives=[pb.WeightedInput(input=pb.QueryInput(id="x"))],
    )
    assert convert.search_query_from_proto(both) == MultiQuery(
        ((QueryInput(text="a"), 2.5),), ((QueryInput(id="x"), 0.0),)
    )
    both.query.text = "b"
    with pytest.raises(InvalidArgument, match="not both"):
        convert.search_query_from_proto(both)
    with pytest.raises(InvalidArgument, match="query is required"):
        convert.search_query_from_proto(pb.SearchRequest(top_k=3))

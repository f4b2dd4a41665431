from __future__ import annotations

import pytest

from encoders.embed import Embedder
from encoders.encoder import Encoder
from encoders.modality import Modality
from indexer.filters import FilterSpec, Match, Range
from indexer.inputs import ItemInput
from indexer.qdrant_store import QdrantStore
from indexer.schema import CollectionSchema
from server.config import ServerConfig
from server.context import background
from server.errors import InvalidArgument, NotFound
from server.planner import SearchParams
from server.query_types import QueryInput
from server.services import Services, make_services
from tests.media import TEXTS, image_bytes

CTX = background()


@pytest.fixture
def engine(encoder: Encoder) -> Services:
    store = QdrantStore(":memory:", CollectionSchema(bundle_id=encoder.bundle.bundle_id, dim=encoder.dim))
    eng = make_services(Embedder(encoder), store, ServerConfig(max_top_k=50, max_batch_items=10))
    eng.writes.upsert(
        CTX, [ItemInput(Modality.TEXT, t, source=f"t{i}", metadata={"i": i}) for i, t in enumerate(TEXTS)]
    )
    eng.writes.upsert(
        CTX, [ItemInput(Modality.IMAGE, image_bytes(i), source=f"img{i}", id=f"img-{i}") for i in range(4)]
    )
    return eng


def test_text_and_image_queries_find_their_duplicates(engine: Services) -> None:
    hits = engine.queries.search(CTX, QueryInput(text=TEXTS[2]), SearchParams(top_k=3)).hits
    assert hits[0].payload["text"] == TEXTS[2] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    out = engine.queries.search(CTX, QueryInput(image=image_bytes(3)), SearchParams(top_k=3))
    assert out.modality == Modality.IMAGE and out.hits[0].payload["source"] == "img3"


def test_all_four_text_image_directions(engine: Services) -> None:
    for query, target in [
        (QueryInput(text="x"), Modality.IMAGE),
        (QueryInput(text="x"), Modality.TEXT),
        (QueryInput(image=image_bytes(0)), Modality.TEXT),
        (QueryInput(image=image_bytes(0)), Modality.IMAGE),
    ]:
        hits = engine.queries.search(CTX, query, SearchParams(top_k=10, modalities=(target,))).hits
        assert hits and {h.payload["modality"] for h in hits} == {target.value}


def test_query_by_id_excludes_itself(engine: Services) -> None:
    out = engine.queries.search(CTX, QueryInput(id="img-1"), SearchParams(top_k=5))
    (point,) = engine.queries.get(CTX, ["img-1"])
    assert out.modality == Modality.IMAGE and out.hits
    assert point.id not in {h.id for h in out.hits}


@pytest.mark.parametrize(
    ("query", "params", "message"),
    [
        (QueryInput(text="  "), SearchParams(top_k=5), "query.text is empty"),
        (QueryInput(), SearchParams(top_k=5), "query is empty"),
        (QueryInput(image=b"\x89PNG broken"), SearchParams(top_k=5), "query.image"),
        (QueryInput(text="a"), SearchParams(top_k=0), "top_k must be between 1 and 50, got 0"),
        (QueryInput(text="a"), SearchParams(top_k=51), "top_k must be between 1 and 50, got 51"),
        (
            QueryInput(text="a"),
            SearchParams(top_k=5, filter=FilterSpec(must=(Match("", "x"),))),
            "filter.must[0].key",
        ),
        (
            QueryInput(text="a"),
            SearchParams(top_k=5, filter=FilterSpec(must=(Range("year"),))),
            "sets no bound",
        ),
        (QueryInput(text="a"), SearchParams(top_k=5, score_threshold=float("nan")), "score_threshold"),
    ],
)
def test_bad_search_input_names_the_field(
    engine: Services, query: QueryInput, params: SearchParams, message: str
) -> None:
    with pytest.raises(InvalidArgument) as exc:
        engine.queries.search(CTX, query, params)
    assert message in exc.value.message


def test_unknown_ids_are_not_found_and_nothing_is_deleted(engine: Services) -> None:
    before = engine.store.count()
    with pytest.raises(NotFound, match="no-such-doc"):
        engine.writes.delete(CTX, ["img-0", "no-such-doc"])
    with pytest.raises(NotFound, match="00000000-0000-0000-0000-000000000000"):
        engine.queries.get(CTX, ["00000000-0000-0000-0000-000000000000"])
    with pytest.raises(NotFound):
        engine.queries.search(CTX, QueryInput(id="missing"), SearchParams(top_k=3))
    assert engine.store.count() == before
    assert engine.writes.delete(CTX, ["img-0"]) == 1
    assert engine.store.count() == before - 1


def test_get_by_point_id_and_caller_id(engine: Services) -> None:
    (by_caller,) = engine.queries.get(CTX, ["img-2"])
    (by_point,) = engine.queries.get(CTX, [by_caller.id], with_vectors=True)
    assert by_point.payload["source"] == "img2" and by_point.vector is not None


def test_oversized_batches_are_refused(engine: Services) -> None:
    with pytest.raises(InvalidArgument, match="at most 10"):
        engine.writes.upsert(CTX, [ItemInput(Modality.TEXT, f"t{i}") for i in range(11)])
    with pytest.raises(InvalidArgument, match="items is empty"):
        engine.writes.upsert(CTX, [])
    with pytest.raises(InvalidArgument, match="inputs has 11 entries"):
        engine.queries.embed(CTX, [QueryInput(text="a")] * 11)


def test_long_query_text_uses_every_chunk(engine: Services) -> None:
    long = " ".join(["mountains"] * 30 + ["ramen"] * 200)
    short = engine.queries.encode(CTX, [QueryInput(text=" ".join(["mountains"] * 30))], ["query"])[0]
    full = engine.queries.encode(CTX, [QueryInput(text=long)], ["query"])[0]
    assert float(short.vector @ full.vector) < 0.999  # the tail beyond the context changed the vector

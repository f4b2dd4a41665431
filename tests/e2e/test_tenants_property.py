"""The tenant property, against a real server with API keys: tenant A calls every RPC with
generated ids, filters, queries and writes, many of them naming tenant B's ids, media, hashes,
caller ids and sources, and

- never sees B's data: nothing of B's (point ids, media ids, content hashes, texts) is in any
  answer, unless A's own request carried that string;
- learns nothing about it: each read answers the same (status, message, hits) when every string of
  B's in the request is swapped for a random one of the same shape (no existence oracle);
- never changes it: after every call, B's points (payloads and vectors) and counts are as before;
- gets only statuses about its own request (never UNAUTHENTICATED, PERMISSION_DENIED or a crash).
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.schema import point_id
from mmsearch import client as mc
from mmsearch.client import MMSearchClient
from mmsearch.v1 import search_pb2 as pb
from tests.e2e.tenant_server import Keyed, item_ids, start_keyed
from tests.media import image_bytes

OK = grpc.StatusCode.OK
ALLOWED = frozenset({OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND})
WORDS = ("red kite", "blue boat", "green field", "old lighthouse", "sleeping cat", "city at night")
SECRET = "zqxbeta"  # in every text only B wrote; A's generated texts never contain it
READS = ("Search", "Recommend", "Get", "Embed", "Stats", "MineHardNegatives")
WRITES = ("Upsert", "Delete", "Ingest", "WritePoints")
FILTER_KEYS = ("tenant", "media_id", "external_id", "content_hash", "source", "modality", "n", "meta.tenant")


@dataclass
class World:
    keyed: Keyed
    a: MMSearchClient
    b: MMSearchClient
    b_ids: list[str]
    b_callers: list[str]
    # Strings only B's data holds (point ids, media ids, content hashes of B-only items), which A
    # may name in requests but must never get back unless it sent them.
    b_only: dict[str, str]  # string -> its shape ("uuid" or "hex")
    values: dict[str, list[str]]  # filter key -> values from both tenants' data
    a_ids: list[str]
    b_snapshot: bytes
    b_points: int
    bundle_id: str
    dim: int
    a_wrote: set[str] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)
    twins: int = 0  # reads replayed with B's strings swapped out


def _inline_ingest(rows: list[tuple[str, str, str]], *, sync: bool, prefix: str) -> list[pb.IngestRequest]:
    """An Ingest stream of inline texts: (source, caller id, text) rows, no bytes to send."""
    headers = [
        pb.FileHeader(file_id=i, source=src, modality=pb.MODALITY_TEXT, text=text, id=cid)
        for i, (src, cid, text) in enumerate(rows)
    ]
    return [
        pb.IngestRequest(start=pb.IngestStart(sync=sync, sync_prefix=prefix if sync else "")),
        pb.IngestRequest(files=pb.IngestFiles(files=headers)),
        pb.IngestRequest(end=pb.IngestEnd()),
    ]


def _text_point(
    w: World, cid: str, ns: str, tenant: str | None, content_hash: str, seed: int
) -> pb.PointData:
    """A text point as a remote writer (WritePoints) sends it, its ids derived in namespace `ns`:
    valid only when `ns` is the caller's tenant (and `tenant` is it or unset)."""
    key = f"id:{cid}"
    pid = point_id(key, 0, ns)
    payload: dict[str, Any] = {
        "modality": "text",
        "source": f"/ray/{cid}",
        "content_hash": content_hash,
        "media_id": point_id(key, -1, ns),
        "bundle_id": w.bundle_id,
        "external_id": cid,
        "text": "a red kite",
        "point_ids": [pid],
    }
    if tenant is not None:
        payload["tenant"] = tenant
    vector = np.random.default_rng(seed).normal(size=w.dim).astype(np.float32)
    return pb.PointData(id=pid, vector=vector.tolist(), payload_json=json.dumps(payload))


def _snapshot(c: MMSearchClient, ids: list[str]) -> bytes:
    points = sorted(c.get(ids, with_vectors=True).points, key=lambda p: p.point.id)
    return b"".join(p.SerializeToString(deterministic=True) for p in points)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("tenant-property")
    keyed = start_keyed(root, {"a": ("acme", "read,write"), "b": ("beta", "read,write")})
    a, b = keyed.client("a", timeout=60), keyed.client("b", timeout=60)
    # Identical items under identical caller ids in both tenants, then some only B has.
    shared = [mc.text_item(f"a photo of a {w}", id=f"doc{i}", metadata={"n": i}) for i, w in enumerate(WORDS)]
    b_only = [
        mc.text_item(
            f"{SECRET} note {i} about a {w}", id=f"bonly{i}", source=f"/lib/beta/{i}.txt", metadata={"n": i}
        )
        for i, w in enumerate(WORDS[:4])
    ] + [mc.image_item(image_bytes(40 + i), id=f"bimg{i}", source=f"/lib/beta/img{i}.png") for i in range(2)]
    b_resp = b.upsert(shared + b_only)
    rows = [(f"/lib/beta/ing{i}.txt", f"bing{i}", f"{SECRET} ingested {w}") for i, w in enumerate(WORDS[:3])]
    outcomes = [r for r in b.ingest_stream(iter(_inline_ingest(rows, sync=False, prefix="")), timeout=120)]
    b_ids = item_ids(b_resp) + [i for r in outcomes if r.HasField("outcome") for i in r.outcome.ids]
    a_resp = a.upsert(
        shared + [mc.text_item(f"acme note about a {w}", id=f"aonly{i}") for i, w in enumerate(WORDS)]
    )
    a_ids = item_ids(a_resp)
    assert len(b_ids) == len(shared) + len(b_only) + len(rows) and not set(a_ids) & set(b_ids)
    b_points = list(b.get(b_ids).points)
    a_points = list(a.get(a_ids).points)
    a_hashes = {p.point.attributes["content_hash"] for p in a_points}
    only: dict[str, str] = {i: "uuid" for i in b_ids}
    for p in b_points:
        only[p.point.media_id] = "uuid"
        if (h := p.point.attributes["content_hash"]) not in a_hashes:
            only[h] = "hex"
    values: dict[str, list[str]] = {
        "tenant": ["acme", "beta", "default"],
        "media_id": sorted({p.point.media_id for p in b_points + a_points}),
        "external_id": [f"doc{i}" for i in range(3)] + ["bonly0", "bimg1", "bing0", "aonly0"],
        "content_hash": sorted({p.point.attributes["content_hash"] for p in b_points + a_points}),
        "source": ["/lib/beta/0.txt", "/lib/beta/img0.png", "/lib/beta/ing1.txt", ""],
        "modality": ["text", "image"],
        "n": ["0", "1"],
        "meta.tenant": ["beta"],
    }
    yield World(
        keyed,
        a,
        b,
        b_ids,
        ["bonly0", "bonly3", "bimg0", "bing1", "doc0", "doc2"],
        only,
        values,
        a_ids,
        _snapshot(b, b_ids),
        b.stats().points,
        a.stats().bundle_id,
        a.stats().dim,
    )
    keyed.stop()


# -- generated calls ----------------------------------------------------------------------------


def _calls(w: World) -> st.SearchStrategy[tuple[str, Any]]:
    ids = st.one_of(
        st.sampled_from(w.b_ids),
        st.sampled_from(sorted(w.b_only)),
        st.sampled_from(w.b_callers),
        st.sampled_from(w.a_ids),
        st.uuids().map(str),
        st.text(alphabet="abcdef-0123456789", min_size=1, max_size=12),
    )
    id_lists = st.lists(ids, min_size=1, max_size=4)

    @st.composite
    def condition(draw: st.DrawFn) -> pb.Condition:
        key = draw(st.sampled_from(FILTER_KEYS))
        value = draw(st.sampled_from(w.values[key]) | ids)
        kind = draw(st.sampled_from(("keyword", "any_of", "integer")))
        if kind == "any_of":
            return pb.Condition(key=key, any_of=pb.KeywordList(values=[value, draw(ids)]))
        if kind == "integer" and value.isdigit():
            return pb.Condition(key=key, integer=int(value))
        return pb.Condition(key=key, keyword=value or "x")

    conditions = st.lists(condition(), max_size=2)
    filters = st.none() | st.builds(pb.Filter, must=conditions, must_not=conditions, should=conditions)
    texts = st.sampled_from(WORDS).map(lambda s: f"a {s}")
    query = st.one_of(texts.map(lambda t: pb.QueryInput(text=t)), ids.map(lambda i: pb.QueryInput(id=i)))
    top_k = st.integers(1, 40)
    item = st.builds(
        lambda t, cid, meta, src: mc.text_item(t, id=cid, metadata=meta, source=src),
        texts,
        st.sampled_from(["", "doc1", "fresh"]) | st.sampled_from(w.b_callers),
        st.sampled_from([{}, {"tenant": "beta"}, {"n": 1}]),
        st.sampled_from(["", "/lib/beta/0.txt", "/lib/acme/x.txt"]),
    )
    rows = st.lists(
        st.tuples(
            st.sampled_from(["/lib/beta/ing0.txt", "/lib/beta/new.txt", "/lib/acme/a.txt"]), ids, texts
        ),
        min_size=1,
        max_size=3,
        unique_by=lambda r: r[0],
    )
    by_method: dict[str, st.SearchStrategy[Any]] = {
        "Search": st.builds(
            lambda q, k, f, g: pb.SearchRequest(query=q, top_k=k, filter=f, group_size=g),
            query,
            top_k,
            filters,
            st.integers(1, 3),
        ),
        "Recommend": st.builds(
            lambda p, n, k, f: pb.RecommendRequest(positive_ids=p, negative_ids=n, top_k=k, filter=f),
            id_lists,
            st.lists(ids, max_size=2),
            top_k,
            filters,
        ),
        "Get": st.builds(lambda i, v: pb.GetRequest(ids=i, with_vectors=v), id_lists, st.booleans()),
        "Embed": st.builds(lambda q: pb.EmbedRequest(inputs=q), st.lists(query, min_size=1, max_size=3)),
        "Stats": st.just(pb.StatsRequest()),
        "MineHardNegatives": st.builds(
            lambda q, p, k, f: pb.MineRequest(queries=q, positive_ids=p, k=k, filter=f),
            st.lists(query, max_size=2),
            st.lists(ids, max_size=2),
            st.integers(1, 10),
            filters,
        ),
        "Upsert": st.builds(
            lambda items: pb.UpsertRequest(items=items), st.lists(item, min_size=1, max_size=3)
        ),
        "Delete": st.builds(lambda i: pb.DeleteRequest(ids=i), id_lists),
        "WritePoints": st.builds(
            lambda cid, ns, tenant, h, seed: pb.WritePointsRequest(
                bundle_id=w.bundle_id, points=[_text_point(w, cid, ns, tenant, h, seed)]
            ),
            st.sampled_from(w.b_callers) | ids,
            st.sampled_from(["acme", "beta", "default"]),
            st.sampled_from([None, "acme", "beta"]),
            st.sampled_from(w.values["content_hash"]) | st.binary(min_size=32, max_size=32).map(bytes.hex),
            st.integers(0, 1000),
        ),
        "Ingest": st.builds(
            lambda r, sync, prefix: _inline_ingest(r, sync=sync, prefix=prefix),
            rows,
            st.booleans(),
            st.sampled_from(["/lib/beta/", "/lib/acme/"]),
        ),
    }
    # Every RPC as often as the others (one_of would favour the first ones).
    return st.sampled_from(READS + WRITES).flatmap(lambda m: by_method[m].map(lambda r: (m, r)))


# -- one call, and what it must not reveal ------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    details: str
    body: bytes  # the serialized response(s)
    seen: tuple[str, ...]  # ids of the points in the answer, in order


def _send(c: MMSearchClient, method: str, request: Any) -> Answer:
    try:
        if method == "Ingest":
            replies = list(c.ingest_stream(iter(request), timeout=120))
            body = b"".join(r.SerializeToString() for r in replies)
            return Answer(
                OK, "", body, tuple(i for r in replies if r.HasField("outcome") for i in r.outcome.ids)
            )
        reply = getattr(c._stub, method)(request, timeout=60)
    except grpc.RpcError as exc:
        return Answer(exc.code(), exc.details() or "", b"", ())
    return Answer(OK, "", reply.SerializeToString(), _ids_in(reply))


def _ids_in(reply: Message) -> tuple[str, ...]:
    if isinstance(reply, pb.SearchResponse):
        return tuple(f"{h.id}:{h.score:.4f}" for h in reply.hits)
    if isinstance(reply, pb.GetResponse):
        return tuple(p.point.id for p in reply.points)
    if isinstance(reply, pb.MineResponse):
        return tuple(h.id for h in reply.negatives)
    if isinstance(reply, pb.UpsertResponse):
        return tuple(i for r in reply.results for i in r.ids)
    if isinstance(reply, pb.StatsResponse):
        return (str(reply.points), *sorted(f"{k}={v}" for k, v in reply.by_modality.items()))
    if isinstance(reply, pb.EmbedResponse):
        return tuple(f"{sum(e.vector):.5f}" for e in reply.embeddings)
    return ()


def _request_bytes(request: Any) -> bytes:
    if isinstance(request, list):
        return b"".join(r.SerializeToString() for r in request)
    data: bytes = request.SerializeToString()
    return data


def _swapped(request: Message, swaps: dict[str, str]) -> Message:
    """The request with each of B's strings replaced by a same-length stand-in (protobuf strings
    are length-prefixed, so the bytes stay a valid message)."""
    data = request.SerializeToString()
    for old, new in swaps.items():
        data = data.replace(old.encode(), new.encode())
    out = type(request)()
    out.ParseFromString(data)
    return out


def _stand_in(shape: str, old: str) -> str:
    return str(uuid.uuid4()) if shape == "uuid" else secrets.token_hex(len(old) // 2)


def test_tenant_a_never_sees_learns_about_or_changes_tenant_bs_data(world: World) -> None:
    w = world
    b_id, b_media = (
        w.b_ids[0],
        next(s for s, shape in w.b_only.items() if shape == "uuid" and s not in w.b_ids),
    )
    b_hash = next(s for s, shape in w.b_only.items() if shape == "hex")
    on_b_media = pb.Filter(must=[pb.Condition(key="media_id", keyword=b_media)])
    rows = [("/lib/beta/0.txt", "bonly0", "a red kite")]
    # Every RPC at least once, each aimed at B's data; the generated calls follow.
    explicit = [
        ("Search", pb.SearchRequest(query=pb.QueryInput(id=b_id), top_k=5)),
        ("Search", pb.SearchRequest(query=pb.QueryInput(text="a note"), top_k=40, filter=on_b_media)),
        ("Recommend", pb.RecommendRequest(positive_ids=[w.a_ids[0]], negative_ids=[b_id], top_k=5)),
        ("Get", pb.GetRequest(ids=[b_id, "bonly1"], with_vectors=True)),
        ("Embed", pb.EmbedRequest(inputs=[pb.QueryInput(id=b_id)])),
        ("Stats", pb.StatsRequest()),
        ("MineHardNegatives", pb.MineRequest(positive_ids=[b_id], k=3)),
        (
            "Upsert",
            pb.UpsertRequest(items=[mc.text_item("a red kite", id="bonly0", source="/lib/beta/0.txt")]),
        ),
        ("Delete", pb.DeleteRequest(ids=[b_id])),
        ("Ingest", _inline_ingest(rows, sync=True, prefix="/lib/beta/")),
    ]
    # WritePoints of exactly B's point for its caller id bonly0 (ids derived in B's namespace) is
    # refused; A's own point under another of B's caller ids and one of B's hashes is written.
    assert point_id("id:bonly0", 0, "beta") in w.b_ids
    foreign = _text_point(w, "bonly0", "beta", None, "0" * 64, 1)
    own = _text_point(w, "bonly1", "acme", None, b_hash, 2)
    expected_writes = [(foreign, grpc.StatusCode.INVALID_ARGUMENT), (own, OK)]

    @given(call=_calls(w))
    @settings(
        max_examples=120,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    def as_tenant_a(call: tuple[str, Any]) -> None:
        check(call)

    def check(call: tuple[str, Any]) -> Answer:
        method, request = call
        sent = _request_bytes(request)
        answer = _send(w.a, method, request)
        where = f"{method} {request}"
        w.outcomes[f"{method} {answer.code.name}"] += 1
        assert answer.code in ALLOWED, f"{answer.code.name}: {answer.details}\n{where}"
        if method in WRITES:  # a string of B's that A wrote (say, as a caller id) is A's data too
            w.a_wrote |= {s for s in w.b_only if s.encode() in sent}
        # Nothing of B's comes back, except what A itself sent or wrote.
        hidden = [s for s in w.b_only if s.encode() not in sent and s not in w.a_wrote]
        if SECRET.encode() not in sent:
            hidden.append(SECRET)
        leaked = [s for s in hidden if s.encode() in answer.body or s in answer.details]
        assert not leaked, f"B's {leaked} reached A\n{where}"
        assert not set(answer.seen) & set(w.b_ids), where
        if method == "Stats" and answer.code == OK:  # only B has images: a count of B's would show
            assert pb.StatsResponse.FromString(answer.body).by_modality["image"] == 0, where
        # B's existence changes nothing A can see: the same read with B's strings swapped out.
        swaps = {
            s: _stand_in(shape, s)
            for s, shape in w.b_only.items()
            if s.encode() in sent and s not in w.a_wrote
        }
        if method in READS and swaps:
            twin = _send(w.a, method, _swapped(request, swaps))
            details = twin.details
            for old, new in swaps.items():
                details = details.replace(new, old)
            assert (twin.code, details, twin.seen) == (answer.code, answer.details, answer.seen), where
            w.twins += 1
        # And B's data is as it was.
        assert w.b.stats().points == w.b_points, where
        assert _snapshot(w.b, w.b_ids) == w.b_snapshot, where
        return answer

    for call in explicit:
        check(call)
    for point, code in expected_writes:
        answer = check(("WritePoints", pb.WritePointsRequest(bundle_id=w.bundle_id, points=[point])))
        assert answer.code == code, answer.details
    as_tenant_a()
    # The run reached every RPC, and replayed reads that named B's data: it did not pass idly.
    assert {k.split()[0] for k in w.outcomes} == set(READS + WRITES), w.outcomes
    assert w.twins > 0 and w.outcomes["Search OK"] > 0, w.outcomes
    # A's own data was reachable all along: the test did not pass by A seeing nothing at all.
    assert w.a.search(text="a photo of a red kite", top_k=5).hits
    assert "Traceback" not in "".join(w.keyed.server.output)

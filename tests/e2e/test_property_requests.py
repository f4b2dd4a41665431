"""Issue 13's property test: generated Search, Embed and Upsert requests, malformed and hostile
ones included, against a real server. Whatever arrives, the answer is OK or a precise client-error
status (never UNKNOWN or INTERNAL), the server keeps serving, its memory stays bounded, and media
bytes that point at a file on the server's disk (ffconcat lists, HLS playlists, file: URLs) never
make it read that file: the canaries."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mmsearch import client as mc
from mmsearch.client import MMSearchClient
from mmsearch.v1 import search_pb2 as pb
from tests.e2e.conftest import REPO, ServerProcess, start_server
from tests.e2e.wire import field, int_field
from tests.media import image_bytes, make_image, tone, write_audio, write_video

OK = grpc.StatusCode.OK
# What a client may be told about its own request. UNKNOWN and INTERNAL mean the server broke;
# UNAVAILABLE here would mean its store broke.
ALLOWED = frozenset(
    {
        OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
METHODS = ("Search", "Embed", "Upsert", "Get", "Delete", "Stats", "Recommend", "MineHardNegatives")
SERVICE = "/mmsearch.v1.SearchService/"
# A patient client: the largest requests the caps allow run to their end, so what they cost is
# what is measured. Past it a call is DEADLINE_EXCEEDED (allowed) and the server must stop.
CALL_TIMEOUT = 30.0
# A reference that made the server decode a canary embeds to (almost) the canary's own vector.
SAME_VECTOR = 0.999
# The server starts at about 0.85 GiB (torch, the tiny bundle, the embedded store). Requests come
# one at a time, each under the 64 MiB message cap; holding a few copies of the largest (message,
# strings, text chunks) costs a few hundred MiB (measured: ~0.4 GiB for 60 MB of text). 1 GiB of
# growth is a leak or an amplification, and 3 GiB in all would not fit beside a small host's rest.
MAX_RSS_GROWTH_KIB = 1024 * 1024
MAX_RSS_KIB = 3 * 1024 * 1024
# gRPC carries the status message in a header; past 8 KiB (the default header list size) some
# clients drop it and past 16 KiB every client gets RESOURCE_EXHAUSTED instead of the real status.
MAX_DETAILS_BYTES = 8 * 1024
CANARY = b"canary"  # every reference below names a file called canary*; no other input does


# -- the server under attack -------------------------------------------------------------------


@dataclass
class Target:
    server: ServerProcess
    client: MMSearchClient
    channel: grpc.Channel
    canaries: list[Path]
    canary_vectors: np.ndarray  # (n, dim): the canaries embedded from their own bytes
    references: list[tuple[str, bytes]]  # (media kind, bytes naming a canary)
    start_rss_kib: int

    def call(self, method: str, payload: bytes) -> tuple[grpc.StatusCode, str, bytes | None]:
        rpc = self.channel.unary_unary(
            SERVICE + method, request_serializer=_identity, response_deserializer=_identity
        )
        logged = self._access_lines(method)
        try:
            return OK, "", rpc(payload, timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                # The server stops at its next check and logs the call then: wait for that, so
                # that what the call cost (memory) is charged to it and not to the next one.
                deadline = time.monotonic() + 20
                while self._access_lines(method) == logged and time.monotonic() < deadline:
                    time.sleep(0.05)
            return exc.code(), exc.details() or "", None

    def _access_lines(self, method: str) -> int:
        return sum(1 for line in self.server.output if f"SearchService/{method} " in line)


def _identity(b: bytes) -> bytes:
    return b


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("property")
    # Media bytes reach the decoders as files in the server's temp dir: a canary beside them is
    # what a relative reference ("file 'canary.wav'") would reach; one outside it, an absolute one.
    server_tmp = root / "server-tmp"
    canaries = [
        write_audio(server_tmp / "canary.wav", tone(7, 2.0, seed=7)),
        write_video(
            server_tmp / "canary.mp4",
            [make_image(700 + k, size=(64, 48)) for k in range(4)],
            fps=2,
            audio=tone(8, 2.0, seed=8),
        ),
        write_audio(root / "canary-outside.wav", tone(9, 2.0, seed=9)),
    ]
    server = start_server(root / "data", env={"TMPDIR": str(server_tmp)})
    client = MMSearchClient(server.target, timeout=120)
    limit = 128 * 2**20  # above the server's: its own refusal is what is tested
    channel = grpc.insecure_channel(
        server.target,
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    try:
        client.wait_ready(30)
        # The canaries' own vectors, the video's audio track included (what an audio reference to
        # it would decode to).
        own = client.embed([_media_input(kind, path.read_bytes()) for kind, path in _canary_inputs(canaries)])
        vectors = np.array([e.vector for e in own.embeddings], dtype=np.float32)
        client.upsert([mc.text_item(t, id=f"seed-{i}") for i, t in enumerate(SEED_TEXTS)])
        client.upsert([mc.image_item(image_bytes(i), id=f"seed-img-{i}") for i in range(3)])
        yield Target(
            server=server,
            client=client,
            channel=channel,
            canaries=canaries,
            canary_vectors=vectors,
            references=_references(canaries),
            start_rss_kib=_status_kib(server.proc.pid, "VmRSS"),
        )
    finally:
        channel.close()
        client.close()
        server.stop()


SEED_TEXTS = ["a red kite over the beach", "quarterly report", "two kittens asleep", "ramen at night"]


def _canary_inputs(canaries: list[Path]) -> list[tuple[str, Path]]:
    wav, mp4, outside = canaries
    return [("audio", wav), ("video", mp4), ("audio", mp4), ("audio", outside)]


def _media_input(kind: str, data: bytes) -> pb.QueryInput:
    q = pb.QueryInput()
    setattr(q, kind, data)
    return q


def _media_item(kind: str, data: bytes) -> pb.Item:
    item = pb.Item(source="canary reference")
    setattr(item, kind, data)
    return item


def _references(canaries: list[Path]) -> list[tuple[str, bytes]]:
    """Media bytes whose only content is a pointer to a canary, in the forms ffmpeg follows."""
    out: list[tuple[str, bytes]] = []
    for path in canaries:
        # relative to the server's working directory (the repository), for in-memory decoding
        from_cwd = os.path.relpath(path, REPO)
        forms = [
            f"ffconcat version 1.0\nfile '{path.name}'\n",
            f"ffconcat version 1.0\nfile '{from_cwd}'\n",
            f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{from_cwd}\n#EXT-X-ENDLIST\n",
            f"ffconcat version 1.0\nfile '{path}'\n",
            f"ffconcat version 1.0\nfile 'file:{path}'\n",
            f"ffconcat version 1.0\nfile '{path.name}'\nfile '{path.name}'\n",
            f"#EXTM3U\n#EXTINF:1,\n{path}\n",
            f"#EXTM3U\n#EXTINF:1,\n{path.name}\n",
            f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{path}\n#EXT-X-ENDLIST\n",
            f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nfile://{path}\n#EXT-X-ENDLIST\n",
            f"file:{path}",
            str(path),
            (
                '<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
                'mediaPresentationDuration="PT2S"><Period><AdaptationSet><Representation id="1" '
                f'bandwidth="1"><BaseURL>{path}</BaseURL></Representation></AdaptationSet></Period></MPD>'
            ),
        ]
        for kind in ("audio", "video", "image"):
            out += [(kind, f.encode()) for f in forms]
    return out


def _arm_atimes(canaries: list[Path]) -> dict[Path, int]:
    """Set each canary's atime before its mtime, so that under relatime (and strictatime) the
    next read of it, by anyone, moves the atime. Under noatime this check sees nothing; the vector
    and status checks still hold."""
    out = {}
    for p in canaries:
        st_ = p.stat()
        os.utime(p, ns=(st_.st_mtime_ns - 60 * 10**9, st_.st_mtime_ns))
        out[p] = p.stat().st_atime_ns
    return out


def _moved(atimes: dict[Path, int]) -> list[Path]:
    return [p for p, t in atimes.items() if p.stat().st_atime_ns != t]


def _status_kib(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) if m else 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


# -- strategies ----------------------------------------------------------------------------------
#
# Each field is mostly well formed and sometimes hostile, so that a request often gets past the
# first check and reaches decoding, the store and the response path.


def _mix(*weighted: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, picked in proportion to its weight."""
    return st.sampled_from([s for w, s in weighted for _ in range(w)]).flatmap(lambda s: s)


def _maybe(strategy: st.SearchStrategy[Any], weight: int = 1) -> st.SearchStrategy[Any]:
    """Usually None (the field unset), sometimes a value."""
    return _mix((3, st.none()), (weight, strategy))


WORDS = ["red", "kite", "beach", "report", "kittens", "ramen", "night", "a", "the", "over"]
LENGTHS = [5_000, 19_999, 20_000, 20_001, 60_000]
floats32 = st.floats(width=32)  # NaN and the infinities included
doubles = st.floats() | st.sampled_from([-0.0, 1e308, -1e308, 5e-324])
uint32 = st.integers(0, 2**32 - 1) | st.sampled_from([0, 1000, 1001, 2**31, 2**32 - 1])

texts = _mix(
    (4, st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join)),
    (3, st.text(max_size=300)),  # any code point but surrogates: controls, NUL, RTL marks, emoji
    (1, st.builds(lambda ch, n: ch * n, st.characters(), st.sampled_from(LENGTHS))),  # one long word
    (1, st.builds(lambda s, n: (s * n)[:n], st.text(min_size=1, max_size=30), st.sampled_from(LENGTHS))),
    (1, st.sampled_from(["", " ", "\x00", "\n\t\r", "\u202e", "\ufeff", "a\x00b", "a\nINFO forged"])),
)
keys = _mix(
    (4, st.sampled_from(["color", "year", "meta.color", "modality", "source", "width", "mtime"])),
    (2, st.from_regex(r"[a-z][a-z0-9_-]{0,12}(\.[a-z0-9_]{1,6}){0,2}", fullmatch=True)),
    (2, st.text(max_size=40)),
    (1, st.sampled_from(["$where", "a\x00b", "line\nforged", "a..b", "a[0]", ".", "meta.", "k" * 5000])),
)


def _range(gt: float | None, gte: float | None, lt: float | None, lte: float | None) -> pb.Range:
    r = pb.Range()
    for name, v in (("gt", gt), ("gte", gte), ("lt", lt), ("lte", lte)):
        if v is not None:
            setattr(r, name, v)
    return r


conditions = st.one_of(
    st.builds(lambda k, v: pb.Condition(key=k, keyword=v), keys, texts),
    st.builds(lambda k, v: pb.Condition(key=k, integer=v), keys, st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda k, v: pb.Condition(key=k, boolean=v), keys, st.booleans()),
    st.builds(
        lambda k, v: pb.Condition(key=k, any_of=pb.KeywordList(values=v)),
        keys,
        st.lists(st.text(max_size=20), max_size=40),
    ),
    st.builds(lambda k, r: pb.Condition(key=k, range=r), keys, st.builds(_range, *[st.none() | doubles] * 4)),
    st.builds(lambda k: pb.Condition(key=k), keys),  # no match set
)
small_lists = st.lists(conditions, max_size=4)
filters = _mix(
    (
        6,
        st.builds(
            lambda a, b, c: pb.Filter(must=a, must_not=b, should=c), small_lists, small_lists, small_lists
        ),
    ),
    # at the cap and past it
    (
        1,
        st.builds(
            lambda c, n, where: pb.Filter(**{where: [c] * n}),
            conditions,
            st.sampled_from([256, 257, 5000]),
            st.sampled_from(["must", "must_not", "should"]),
        ),
    ),
)


def _struct(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def _nested(depth: int, leaf: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"leaf": leaf}
    for _ in range(depth):
        out = {"d": out}
    return out


json_leaves = st.none() | st.booleans() | doubles | st.text(max_size=50)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
structs = _mix(
    (6, st.dictionaries(st.text(max_size=20), json_values, max_size=6).map(_struct)),
    (1, st.builds(lambda d, leaf: _struct(_nested(d, leaf)), st.integers(0, 30), json_leaves)),
    # the byte cap: just inside it, and past it; and many keys
    (1, st.builds(lambda n: _struct({"big": "v" * n}), st.sampled_from([65_000, 65_600]))),
    (1, st.builds(lambda n: _struct({f"k{i}": i for i in range(n)}), st.sampled_from([10, 5000]))),
)


def _media_samples() -> list[bytes]:
    """Real media of each kind (none of it a canary): decodable, and the base for damaged copies."""
    import tempfile

    out = [image_bytes(3), image_bytes(4, "JPEG"), image_bytes(5, "GIF"), image_bytes(6, "WEBP")]
    with tempfile.TemporaryDirectory() as d:
        out.append(write_audio(Path(d) / "s.wav", tone(2, 1.0)).read_bytes())
        out.append(write_audio(Path(d) / "s.flac", tone(3, 0.5)).read_bytes())
        frames = [make_image(50 + k, size=(48, 32)) for k in range(2)]
        out.append(write_video(Path(d) / "s.mp4", frames, fps=2, audio=tone(4, 1.0)).read_bytes())
    return out


SAMPLES = _media_samples()
# Drawn by index: a strategy's repr (which Hypothesis builds) then holds no media bytes.
samples = st.sampled_from(range(len(SAMPLES))).map(SAMPLES.__getitem__)


def _damage(sample: bytes, cut: float, flips: list[tuple[float, int]], junk: bytes) -> bytes:
    b = bytearray(sample[: max(1, int(len(sample) * cut))])
    for where, value in flips:
        b[int(where * (len(b) - 1))] = value
    return bytes(b) + junk


def media_bytes(references: list[tuple[str, bytes]]) -> st.SearchStrategy[bytes]:
    refs = st.sampled_from([r for _, r in references])
    return _mix(
        (4, samples),
        (2, st.binary(max_size=2000)),
        (2, refs),
        (1, st.builds(lambda r, junk: r + b"\n# " + junk, refs, st.binary(max_size=40))),
        (
            2,
            st.builds(
                _damage,
                samples,
                st.floats(0.0, 1.0),
                st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8),
                st.binary(max_size=64),
            ),
        ),
        (1, st.sampled_from([b"", b"\x00", b"RIFF", b"\x1aE\xdf\xa3", b"\x00\x00\x00\x18ftypmp42"])),
    )


def query_inputs(references: list[tuple[str, bytes]]) -> st.SearchStrategy[pb.QueryInput]:
    media = st.tuples(st.sampled_from(["image", "audio", "video"]), media_bytes(references))
    ids = st.sampled_from(["seed-0", "seed-img-1"]) | texts
    return _mix(
        (4, st.builds(lambda t: pb.QueryInput(text=t), texts)),
        (4, st.builds(lambda m: _media_input(*m), media)),
        (1, st.builds(lambda i: pb.QueryInput(id=i), ids)),
        (1, st.just(pb.QueryInput())),
    )


def _stages(
    o: float | None, q: bool | None, e: bool | None, f: bool | None, m: float | None
) -> pb.SearchStages:
    s = pb.SearchStages()
    fields = ("oversampling", "quantized", "exact_rescore", "frames_rescore", "mmr_lambda")
    for name, v in zip(fields, (o, q, e, f, m), strict=True):
        if v is not None:
            setattr(s, name, v)
    return s


def search_requests(references: list[tuple[str, bytes]]) -> st.SearchStrategy[pb.SearchRequest]:
    q = query_inputs(references)
    weights = _mix((3, st.floats(0.0, 10.0, width=32)), (1, floats32), (1, st.sampled_from([-1.0, 3.4e38])))
    weighted = st.builds(lambda i, w: pb.WeightedInput(input=i, weight=w), q, weights)
    some_floats = _mix((2, st.floats(0.0, 1.0, width=32)), (1, floats32))
    stages = st.builds(
        _stages, *[_maybe(st.booleans()) if i in (1, 2, 3) else _maybe(some_floats) for i in range(5)]
    )

    def build(shape: str, query: Any, positives: Any, negatives: Any, **kw: Any) -> pb.SearchRequest:
        # one query; weighted positives (and negatives); or, rarely, both or neither
        r = pb.SearchRequest()
        if shape in ("query", "both"):
            r.query.CopyFrom(query)
        if shape in ("weighted", "both"):
            r.positives.extend(positives)
            r.negatives.extend(negatives)
        for name, value in kw.items():
            if value is None:
                continue
            if isinstance(value, Message):
                getattr(r, name).CopyFrom(value)
            elif isinstance(value, list):
                getattr(r, name).extend(value)
            else:
                setattr(r, name, value)
        return r

    return st.builds(
        build,
        shape=_mix(
            (8, st.just("query")), (3, st.just("weighted")), (1, st.sampled_from(["both", "neither"]))
        ),
        query=q,
        positives=st.lists(weighted, min_size=1, max_size=3),
        negatives=st.lists(weighted, max_size=2),
        top_k=_mix((6, st.integers(1, 20)), (1, uint32)),
        group_size=_mix((6, st.integers(0, 4)), (1, uint32)),
        modalities=_mix(
            (6, st.lists(st.integers(1, 4), max_size=3)), (1, st.lists(st.integers(0, 7), max_size=5))
        ),
        filter=_maybe(filters, 2),
        score_threshold=_maybe(some_floats),
        calibrated_threshold=_maybe(some_floats),
        fusion=_mix((4, st.integers(0, 1)), (1, st.integers(2, 9))),
        stages=_maybe(stages),
    )


def embed_requests(references: list[tuple[str, bytes]]) -> st.SearchStrategy[pb.EmbedRequest]:
    q = query_inputs(references)
    return _mix(
        (8, st.builds(lambda xs: pb.EmbedRequest(inputs=xs), st.lists(q, min_size=1, max_size=4))),
        (1, st.just(pb.EmbedRequest())),
        (1, st.builds(lambda x, n: pb.EmbedRequest(inputs=[x] * n), q, st.sampled_from([256, 257]))),
    )


def items(references: list[tuple[str, bytes]]) -> st.SearchStrategy[pb.Item]:
    content = _mix(
        (1, st.just(("none", None))),
        (4, st.tuples(st.just("text"), texts)),
        (4, st.tuples(st.sampled_from(["image", "audio", "video"]), media_bytes(references))),
    )

    def build(id_: str, c: tuple[str, Any], source: str, meta: Any, attrs: Any) -> pb.Item:
        item = pb.Item(id=id_, source=source)
        if c[0] != "none":
            setattr(item, c[0], c[1])
        if meta is not None:
            item.metadata.CopyFrom(meta)
        if attrs is not None:
            item.attributes.CopyFrom(attrs)
        return item

    return st.builds(
        build,
        _mix((3, st.just("")), (1, st.sampled_from(["seed-0", "seed-img-1"])), (1, texts)),
        content,
        _mix((3, st.just("")), (2, texts), (1, st.builds(lambda n: "s" * n, st.sampled_from([4096, 4097])))),
        _maybe(structs),
        _maybe(structs),
    )


def upsert_requests(references: list[tuple[str, bytes]]) -> st.SearchStrategy[pb.UpsertRequest]:
    item = items(references)
    return _mix(
        (8, st.builds(lambda xs: pb.UpsertRequest(items=xs), st.lists(item, min_size=1, max_size=4))),
        (1, st.just(pb.UpsertRequest())),
        (1, st.builds(lambda x, n: pb.UpsertRequest(items=[x] * n), item, st.sampled_from([256, 257]))),
    )


# Raw protobuf, for what the Python library will not build: bad UTF-8 in string fields, negative
# varints in unsigned fields, wrong wire types, nesting past the recursion limit, garbage.


def _deep_struct(depth: int) -> bytes:
    value = b"\x11" + b"\x00" * 8  # Value.number_value = 0.0
    for _ in range(depth):
        value = field(5, field(1, field(1, b"a") + field(2, value)))  # Value.struct_value
    return field(1, field(1, b"a") + field(2, value))


# At the caps: each costs seconds, so they are drawn rarely (the bench sends them in a stream).
at_the_caps = st.one_of(
    # an item at the text cap, with metadata at the byte cap (stored with every chunk)
    st.builds(
        lambda meta: ("Upsert", pb.UpsertRequest(items=[mc.text_item("w " * 500_000, metadata=meta)])),
        st.sampled_from([{}, {"big": "v" * 65_000}]),
    ),
    st.builds(
        lambda: (
            "Embed",
            pb.EmbedRequest(inputs=[pb.QueryInput(text=f"{i} " + "q" * 19_990) for i in range(256)]),
        )
    ),
    st.builds(
        lambda: (
            "Search",
            pb.SearchRequest(query=pb.QueryInput(text="x" * 20_000), top_k=1000, group_size=100),
        )
    ),
    # one byte past the message cap (64 MiB): refused before it is parsed
    st.builds(lambda: ("Upsert", field(1, field(2, b"w" * (64 * 2**20 + 1))))),
)


crafted = st.one_of(
    # Search{query{text: any bytes (bad UTF-8)}, top_k: any 64-bit value (negative included)}
    st.builds(
        lambda t, k: field(1, field(1, t)) + int_field(2, k),
        st.binary(max_size=40),
        st.integers(-(2**63), 2**64 - 1),
    ),
    # Search{top_k sent as a length-delimited field}
    st.builds(lambda b: field(1, field(1, b"x")) + field(2, b), st.binary(max_size=10)),
    # Upsert{items{text, metadata nested `depth` deep}}
    st.builds(lambda d: field(1, field(2, b"deep") + field(5, _deep_struct(d))), st.integers(50, 200)),
    # Embed{inputs × n} of empty inputs
    st.builds(lambda n: field(1, b"") * n, st.sampled_from([1, 257, 10_000])),
    # a filter condition whose key is any bytes
    st.builds(
        lambda k: (
            field(1, field(1, b"x")) + int_field(2, 1) + field(4, field(1, field(1, k) + field(2, b"v")))
        ),
        st.binary(max_size=20),
    ),
)


def raw_calls(references: list[tuple[str, bytes]]) -> st.SearchStrategy[tuple[str, bytes]]:
    valid = search_requests(references).map(lambda m: m.SerializeToString())
    mutated = st.builds(
        lambda b, flips: bytes(dict(flips).get(i, v) for i, v in enumerate(b)),
        valid,
        st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=6),
    )
    return st.tuples(st.sampled_from(METHODS), _mix((1, st.binary(max_size=600)), (1, mutated), (1, crafted)))


def calls(references: list[tuple[str, bytes]]) -> st.SearchStrategy[tuple[str, Message | bytes]]:
    return _mix(
        (30, st.tuples(st.just("Search"), search_requests(references))),
        (20, st.tuples(st.just("Embed"), embed_requests(references))),
        (20, st.tuples(st.just("Upsert"), upsert_requests(references))),
        (20, raw_calls(references)),
        (3, at_the_caps),
    )


# -- checks ------------------------------------------------------------------------------------------


def _media_of(inputs: list[pb.QueryInput]) -> list[bytes]:
    return [
        getattr(q, q.WhichOneof("input"))
        for q in inputs
        if q.WhichOneof("input") in ("image", "audio", "video")
    ]


def _names_canary(data: bytes) -> bool:
    return CANARY in data


def _check_canaries(target: Target, message: Message, reply: bytes) -> list[str]:
    """Faults in an OK reply: a canary reference that decoded, or a vector equal to a canary's."""
    faults: list[str] = []
    if isinstance(message, pb.EmbedRequest):
        embedded = pb.EmbedResponse.FromString(reply).embeddings
        for i, (q, e) in enumerate(zip(message.inputs, embedded, strict=False)):
            if not any(_names_canary(b) for b in _media_of([q])):
                continue  # (the tiny bundle's random towers map unrelated media close together)
            faults.append(f"Embed of a canary reference succeeded (inputs[{i}])")
            vector = np.asarray(e.vector, dtype=np.float32)
            if len(vector) and float((target.canary_vectors @ vector).max()) >= SAME_VECTOR:
                faults.append(
                    f"Embed returned a canary's own vector for inputs[{i}]: the server read the canary"
                )
    elif isinstance(message, pb.SearchRequest):
        inputs = [message.query] + [w.input for w in (*message.positives, *message.negatives)]
        if any(_names_canary(b) for b in _media_of(inputs)):
            faults.append("Search with a canary reference as query succeeded")
    elif isinstance(message, pb.UpsertRequest):
        written = pb.UpsertResponse.FromString(reply)
        for r in written.results:
            item = message.items[r.index]
            kind = item.WhichOneof("content")
            if kind in ("image", "audio", "video") and _names_canary(getattr(item, kind)) and not r.error:
                faults.append(f"Upsert stored items[{r.index}], a canary reference ({kind})")
    return faults


def _bounded(details: str) -> bool:
    """The status message fits in a header: not cut off by the transport for its size."""
    return len(details.encode()) <= MAX_DETAILS_BYTES and "metadata size exceeds" not in details


def _describe(method: str, message: Message | bytes) -> str:
    """The request, short: runs of one character written as `c×n`."""
    text = repr(message) if isinstance(message, bytes) else str(message)
    text = re.sub(r"(.)\1{15,}", lambda m: f"{m.group(1)}×{len(m.group(0))}", text, flags=re.S)
    return (
        f"{method} ({len(message) if isinstance(message, bytes) else message.ByteSize()} bytes): {text[:800]}"
    )


def _check_memory(target: Target) -> None:
    pid = target.server.proc.pid
    peak = _status_kib(pid, "VmHWM")
    assert peak - target.start_rss_kib < MAX_RSS_GROWTH_KIB, (
        f"server peak RSS {target.start_rss_kib} -> {peak} KiB"
    )
    assert peak < MAX_RSS_KIB, f"server peak RSS {peak} KiB"
    for child in _children(pid):  # the decoder workers
        child_peak = _status_kib(child, "VmHWM")
        assert child_peak < MAX_RSS_KIB, f"decoder worker {child} peak RSS {child_peak} KiB"


def test_media_naming_a_file_on_the_server_never_reads_it(target: Target) -> None:
    """Every canary reference, as each media kind, through Embed, Search and Upsert."""
    atimes = _arm_atimes(target.canaries)
    faults = []
    for kind, ref in target.references:
        for method, message in (
            ("Embed", pb.EmbedRequest(inputs=[_media_input(kind, ref)])),
            ("Search", pb.SearchRequest(query=_media_input(kind, ref), top_k=3)),
        ):
            code, details, reply = target.call(method, message.SerializeToString())
            if code not in ALLOWED or not _bounded(details):
                faults.append(f"{method} {kind} {ref!r}: {code.name} {details[:200]}")
            elif code == OK and reply is not None:
                faults += [f"{f}: {kind} {ref!r}" for f in _check_canaries(target, message, reply)]
    batch = pb.UpsertRequest(items=[_media_item(kind, ref) for kind, ref in target.references])
    code, details, reply = target.call("Upsert", batch.SerializeToString())
    assert code == OK, f"{code.name}: {details}"
    assert reply is not None
    faults += _check_canaries(target, batch, reply)
    faults += [f"{p} was read (its atime moved)" for p in _moved(atimes)]
    assert not faults, "\n".join(faults)


def test_generated_requests_get_precise_statuses_and_never_read_the_canary(target: Target) -> None:
    atimes = _arm_atimes(target.canaries)

    @given(call=calls(target.references))
    # Faults found by earlier runs, replayed every time:
    # metadata at its cap on an item at its text cap (stored once per chunk: GiBs of RSS)
    @example(
        call=("Upsert", pb.UpsertRequest(items=[mc.text_item("w " * 500_000, metadata={"b": "v" * 65_000})]))
    )
    # an unknown id (or filter key) echoed whole into the status message, past the header limit
    @example(call=("Embed", pb.EmbedRequest(inputs=[pb.QueryInput(id="i" * 20_000)])))
    @example(
        call=(
            "Search",
            pb.SearchRequest(
                query=pb.QueryInput(text="x"),
                top_k=1,
                filter=pb.Filter(must=[pb.Condition(key="k" * 20_000)]),
            ),
        )
    )
    @settings(
        max_examples=120,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    def attack(call: tuple[str, Message | bytes]) -> None:
        method, message = call
        payload = message if isinstance(message, bytes) else message.SerializeToString()
        code, details, reply = target.call(method, payload)
        assert code in ALLOWED, f"{code.name}: {details[:500]}\nrequest {_describe(method, message)}"
        assert _bounded(details), f"{code.name}: {details[:500]}\nrequest {_describe(method, message)}"
        if code == OK and reply is not None and not isinstance(message, bytes):
            faults = _check_canaries(target, message, reply)
            assert not faults, f"{faults}\nrequest {_describe(method, message)}"
        assert target.server.proc.poll() is None, "the server exited"
        assert target.client.health() == "SERVING"
        try:
            _check_memory(target)  # after each call, so that a failure names the request
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nrequest {_describe(method, message)}") from None

    attack()

    # After the attack: still serving, memory bounded, canaries untouched, nothing logged as a crash.
    hits = target.client.search(text="a red kite over the beach", top_k=3).hits
    assert hits, "ordinary search returns nothing after the attack"
    _check_memory(target)
    assert not _moved(atimes), f"a canary was read (its atime moved): {_moved(atimes)}"
    logged = "".join(target.server.output)
    assert "Traceback" not in logged, logged[logged.index("Traceback") - 2000 :][:6000]

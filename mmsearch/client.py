"""Python client for the mmsearch gRPC API. Light: grpc and the generated stubs, nothing else."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mmsearch.channel import Tls, open_channel
from mmsearch.v1 import search_pb2 as pb
from mmsearch.v1 import search_pb2_grpc as pb_grpc

MODALITIES = {
    "text": pb.MODALITY_TEXT,
    "image": pb.MODALITY_IMAGE,
    "audio": pb.MODALITY_AUDIO,
    "video": pb.MODALITY_VIDEO,
}
_MODALITY_NAMES = {v: k for k, v in MODALITIES.items()}
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_TERM = re.compile(r"^\s*([^=!<>\s]+)\s*(!=|>=|<=|=|>|<)\s*(.*?)\s*$")


class MMSearchClient:
    """Blocking client. Methods raise grpc.RpcError with the server's status and message."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 60.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        api_key: str | None = None,
        tls: Tls | None = None,
    ) -> None:
        """`api_key`: sent with every call (a server with keys requires one). `tls`: connect over
        TLS, trusting `tls.ca` (or the system's roots), with a client certificate for mutual TLS."""
        self.target = target
        self.timeout = timeout
        self._channel = open_channel(
            target,
            [
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
            api_key=api_key,
            tls=tls,
        )
        self._stub = pb_grpc.SearchServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> MMSearchClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the channel connects. Raises grpc.FutureTimeoutError after `timeout`."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def health(self, service: str = "") -> str:
        resp = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    def search(
        self,
        *,
        text: str | None = None,
        image: bytes | None = None,
        id: str | None = None,
        audio: bytes | None = None,
        video: bytes | None = None,
        top_k: int = 10,
        modalities: Iterable[str] = (),
        filter: pb.Filter | None = None,
        score_threshold: float | None = None,
        group_size: int = 1,
        positives: Sequence[tuple[pb.QueryInput, float]] = (),
        negatives: Sequence[tuple[pb.QueryInput, float]] = (),
        fusion: str = "mean",
        stages: pb.SearchStages | None = None,
        calibrated_threshold: float | None = None,
    ) -> pb.SearchResponse:
        """Top `top_k` media, each with up to `group_size` hits, for one query input or for
        weighted `positives` (and `negatives`) built with `query_input`."""
        single = any(v is not None for v in (text, image, id, audio, video))
        request = pb.SearchRequest(
            query=query_input(text=text, image=image, id=id, audio=audio, video=video) if single else None,
            top_k=top_k,
            modalities=[modality(m) for m in modalities],
            filter=filter,
            score_threshold=score_threshold,
            group_size=group_size,
            positives=[pb.WeightedInput(input=q, weight=w) for q, w in positives],
            negatives=[pb.WeightedInput(input=q, weight=w) for q, w in negatives],
            fusion=pb.FUSION_RRF if fusion == "rrf" else pb.FUSION_UNSPECIFIED,
            stages=stages,
            calibrated_threshold=calibrated_threshold,
        )
        return self._stub.Search(request, timeout=self.timeout)

    def search_request(self, request: pb.SearchRequest) -> pb.SearchResponse:
        """Send a SearchRequest built by hand (every option of the API)."""
        return self._stub.Search(request, timeout=self.timeout)

    def recommend(
        self,
        positive_ids: Sequence[str],
        negative_ids: Sequence[str] = (),
        *,
        top_k: int = 10,
        modalities: Iterable[str] = (),
        filter: pb.Filter | None = None,
        group_size: int = 1,
    ) -> pb.SearchResponse:
        request = pb.RecommendRequest(
            positive_ids=list(positive_ids),
            negative_ids=list(negative_ids),
            top_k=top_k,
            modalities=[modality(m) for m in modalities],
            filter=filter,
            group_size=group_size,
        )
        return self._stub.Recommend(request, timeout=self.timeout)

    def mine(
        self,
        *,
        queries: Sequence[pb.QueryInput] = (),
        positive_ids: Sequence[str] = (),
        k: int = 10,
        modalities: Iterable[str] = (),
        filter: pb.Filter | None = None,
        group_key: str = "",
        group: str = "",
        max_fraction_of_positive: float | None = None,
        near_duplicate: float | None = None,
    ) -> pb.MineResponse:
        request = pb.MineRequest(
            queries=list(queries),
            positive_ids=list(positive_ids),
            k=k,
            modalities=[modality(m) for m in modalities],
            filter=filter,
            group_key=group_key,
            group=group,
            max_fraction_of_positive=max_fraction_of_positive,
            near_duplicate=near_duplicate,
        )
        return self._stub.MineHardNegatives(request, timeout=self.timeout)

    def embed(self, inputs: Sequence[pb.QueryInput]) -> pb.EmbedResponse:
        return self._stub.Embed(pb.EmbedRequest(inputs=list(inputs)), timeout=self.timeout)

    def upsert(self, items: Sequence[pb.Item]) -> pb.UpsertResponse:
        return self._stub.Upsert(pb.UpsertRequest(items=list(items)), timeout=self.timeout)

    def get(self, ids: Sequence[str], *, with_vectors: bool = False) -> pb.GetResponse:
        return self._stub.Get(pb.GetRequest(ids=list(ids), with_vectors=with_vectors), timeout=self.timeout)

    def delete(self, ids: Sequence[str]) -> int:
        return int(self._stub.Delete(pb.DeleteRequest(ids=list(ids)), timeout=self.timeout).deleted)

    def stats(self) -> pb.StatsResponse:
        return self._stub.Stats(pb.StatsRequest(), timeout=self.timeout)

    def ingest_stream(
        self, requests: Iterator[pb.IngestRequest], *, timeout: float | None = None
    ) -> Iterator[pb.IngestResponse]:
        """The raw Ingest stream (mmsearch.remote_ingest drives it). No deadline unless `timeout`
        is given: a bulk ingest runs as long as the library takes."""
        responses: Iterator[pb.IngestResponse] = self._stub.Ingest(requests, timeout=timeout)
        return responses

    def write_points(self, bundle_id: str, points: Sequence[pb.PointData]) -> pb.WritePointsResponse:
        """Write precomputed points (mmsearch.point_sink builds them from PointRecords). All or
        none: INVALID_ARGUMENT names the first bad point, FAILED_PRECONDITION another bundle."""
        request = pb.WritePointsRequest(bundle_id=bundle_id, points=list(points))
        return self._stub.WritePoints(request, timeout=self.timeout)

    def reindex(
        self,
        bundle: str,
        *,
        allow_missing: bool = False,
        drop_old: bool = False,
        timeout: float | None = None,
    ) -> Iterator[pb.ReindexResponse]:
        """Rebuild the server's index under `bundle` and switch to it (admin scope): progress
        messages, then the report. No deadline unless `timeout`: it runs as long as the rebuild
        takes; closing the stream early stops it (running it again resumes)."""
        request = pb.ReindexRequest(bundle=bundle, allow_missing=allow_missing, drop_old=drop_old)
        responses: Iterator[pb.ReindexResponse] = self._stub.Reindex(request, timeout=timeout)
        return responses


def modality(name: str) -> pb.Modality:
    try:
        return MODALITIES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}: expected one of {', '.join(MODALITIES)}") from None


def modality_name(value: int) -> str:
    return _MODALITY_NAMES.get(value, "unspecified")  # type: ignore[call-overload]


def query_input(
    *,
    text: str | None = None,
    image: bytes | None = None,
    id: str | None = None,
    audio: bytes | None = None,
    video: bytes | None = None,
) -> pb.QueryInput:
    """A query input from exactly one of text, image / audio / video bytes or a stored id."""
    given = {"text": text, "image": image, "id": id, "audio": audio, "video": video}
    chosen = [k for k, v in given.items() if v is not None]
    if len(chosen) != 1:
        raise ValueError("give exactly one of text, image, audio, video or id")
    q = pb.QueryInput()
    setattr(q, chosen[0], given[chosen[0]])
    return q


def text_item(
    text: str, *, id: str = "", source: str = "", metadata: dict[str, Any] | None = None
) -> pb.Item:
    return pb.Item(text=text, id=id, source=source, metadata=to_struct(metadata or {}))


def image_item(
    image: bytes | Path, *, id: str = "", source: str = "", metadata: dict[str, Any] | None = None
) -> pb.Item:
    return media_item(image, "image", id=id, source=source, metadata=metadata)


def media_item(
    data: bytes | Path, kind: str, *, id: str = "", source: str = "", metadata: dict[str, Any] | None = None
) -> pb.Item:
    """An image, audio or video item (`kind`) from bytes or a file."""
    if kind not in ("image", "audio", "video"):
        raise ValueError(f"kind must be image, audio or video, got {kind!r}")
    raw = data.read_bytes() if isinstance(data, Path) else data
    item = pb.Item(
        id=id,
        source=source or (str(data) if isinstance(data, Path) else ""),
        metadata=to_struct(metadata or {}),
    )
    setattr(item, kind, raw)
    return item


def parse_filter(terms: Iterable[str]) -> pb.Filter | None:
    """Filter from terms like ``color=red``, ``year>=2020``, ``kind!=draft``.

    ``=`` and ``!=`` match a keyword, or an integer / boolean when the value is one (``42``,
    ``true``); ``>``, ``>=``, ``<``, ``<=`` are numeric ranges. Raises ValueError naming a
    malformed term.
    """
    must: list[pb.Condition] = []
    must_not: list[pb.Condition] = []
    for term in terms:
        m = _TERM.match(term)
        if not m or not m.group(3):
            raise ValueError(
                f"malformed filter {term!r}: expected KEY=VALUE, KEY!=VALUE or KEY>=NUMBER (> < <=)"
            )
        key, op, value = m.groups()
        if op in ("=", "!="):
            cond = _match_condition(key, value)
            (must if op == "=" else must_not).append(cond)
            continue
        try:
            bound = float(value)
        except ValueError:
            raise ValueError(f"malformed filter {term!r}: {op} needs a number, got {value!r}") from None
        rng = {
            ">": pb.Range(gt=bound),
            ">=": pb.Range(gte=bound),
            "<": pb.Range(lt=bound),
            "<=": pb.Range(lte=bound),
        }
        must.append(pb.Condition(key=key, range=rng[op]))
    if not must and not must_not:
        return None
    return pb.Filter(must=must, must_not=must_not)


def _match_condition(key: str, value: str) -> pb.Condition:
    if value.lower() in ("true", "false"):
        return pb.Condition(key=key, boolean=value.lower() == "true")
    if re.fullmatch(r"-?\d+", value):
        return pb.Condition(key=key, integer=int(value))
    return pb.Condition(key=key, keyword=value)


def hit_to_dict(hit: pb.SearchHit) -> dict[str, Any]:
    """A search hit as plain JSON-ready data."""
    out: dict[str, Any] = {
        "id": hit.id,
        "score": round(float(hit.score), 6),
        "calibrated_score": round(float(hit.calibrated_score), 6),
        "modality": modality_name(hit.modality),
        "source": hit.source,
        "media_id": hit.media_id,
        "segment": hit.segment,
    }
    if hit.text:
        out["text"] = hit.text
    if hit.HasField("t_start"):
        out["t_start"] = round(hit.t_start, 3)
        out["t_end"] = round(hit.t_end, 3)
        out["track"] = pb.Track.Name(hit.track).removeprefix("TRACK_").lower()
        out["pooled"] = hit.pooled
    out["metadata"] = _ints_back(json_format.MessageToDict(hit.metadata))
    out["attributes"] = _ints_back(json_format.MessageToDict(hit.attributes))
    return out


def _ints_back(d: dict[str, Any]) -> dict[str, Any]:
    # protobuf Struct stores every number as a double; show whole numbers as integers again.
    return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in d.items()}


def to_struct(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s

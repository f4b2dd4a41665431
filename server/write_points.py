"""The WritePoints RPC: points computed elsewhere, checked and written as the caller's tenant.

The checks and the write are indexer.sinks.StoreSink's (the same ones a local writer gets), over
the caller's tenant view of the store; this module converts messages and maps errors to status
codes. Nothing here reads gRPC objects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from indexer.point_check import PointError
from indexer.schema import PointRecord
from indexer.sinks import StoreSink
from indexer.store import BundleMismatchError
from indexer.tenancy import namespace
from mmsearch.v1 import search_pb2 as pb
from server.context import RequestContext
from server.errors import FailedPrecondition, InvalidArgument
from server.services import Services

# Points per request: a Ray writer's batch, bounded so one request stays one store write.
MAX_POINTS_PER_REQUEST = 4096


def points_from_proto(points: Sequence[pb.PointData], dim: int) -> list[PointRecord]:
    """PointRecords out of the request; InvalidArgument names the first malformed message."""
    out: list[PointRecord] = []
    for i, p in enumerate(points):
        where = f"points[{i}]"
        try:
            payload = json.loads(p.payload_json, parse_constant=_no_constant) if p.payload_json else None
        except (ValueError, RecursionError) as exc:
            raise InvalidArgument(f"{where}.payload_json is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise InvalidArgument(f"{where}.payload_json is not a JSON object")
        frames = None
        if len(p.frames):
            if len(p.frames) % dim:
                raise InvalidArgument(
                    f"{where}.frames has {len(p.frames)} values, not a multiple of the dimension {dim}"
                )
            frames = np.asarray(p.frames, dtype=np.float32).reshape(-1, dim)
        out.append(PointRecord(p.id, np.asarray(p.vector, dtype=np.float32), payload, frames=frames))
    return out


def write_points(
    services: Services, ctx: RequestContext, request: pb.WritePointsRequest
) -> pb.WritePointsResponse:
    store = services.store
    ns = namespace(ctx.tenant)
    dim = store.schema.dim
    if not request.bundle_id:
        raise InvalidArgument("bundle_id is empty: name the bundle that computed the vectors")
    if len(request.points) > MAX_POINTS_PER_REQUEST:
        raise InvalidArgument(
            f"points has {len(request.points)} entries; at most {MAX_POINTS_PER_REQUEST} per request"
        )
    sink = StoreSink(store, namespace=ns)
    if request.bundle_id != sink.bundle_id:
        raise FailedPrecondition(
            str(BundleMismatchError("this server's index", sink.bundle_id, request.bundle_id))
        )
    points = points_from_proto(request.points, dim)
    ctx.check()
    try:
        result = sink.write(points, bundle_id=request.bundle_id)
    except PointError as exc:
        raise InvalidArgument(str(exc)) from None
    if result.written:
        services.writes.mark_written()
    return pb.WritePointsResponse(written=result.written, removed=result.removed, namespace=ns, dim=dim)


def _no_constant(name: str) -> float:
    # json accepts NaN and Infinity by default; a payload never holds them.
    raise ValueError(f"{name} is not a JSON value")

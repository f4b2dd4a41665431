"""A PointSink that writes through a server's WritePoints: for a writer whose points are computed
away from the process that owns the store (a Ray ingest writing into a server's embedded store).

Light: grpc, numpy and the torch-free indexer modules; no model code.

    with MMSearchClient(target, api_key=...) as client:
        sink = GrpcPointSink(client, bundle_id)      # FAILED_PRECONDITION -> BundleMismatchError
        sink.write(points)                           # PointRecords, as indexer.media_points builds
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import grpc
import numpy as np

from indexer.point_check import PointError, check_points
from indexer.schema import PointRecord
from indexer.sinks import WriteResult
from indexer.store import BundleMismatchError
from mmsearch.client import MMSearchClient
from mmsearch.v1 import search_pb2 as pb

# A request stays well under the server's message cap (64 MiB by default) and its point cap.
MAX_POINTS = 512
MAX_BYTES = 8 * 1024 * 1024


class GrpcPointSink:
    """Writes points of `bundle_id` into the index of the server `client` talks to, as the
    caller's tenant. Opening it checks the bundle and learns the namespace ids derive in."""

    def __init__(
        self,
        client: MMSearchClient,
        bundle_id: str,
        *,
        max_points: int = MAX_POINTS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.client, self.bundle_id = client, bundle_id
        self.max_points, self.max_bytes = max_points, max_bytes
        probe = self._send([])  # no points: checks the bundle, answers namespace and dimension
        self.namespace, self.dim = probe.namespace, int(probe.dim)

    def write(self, points: Sequence[PointRecord]) -> WriteResult:
        """Checked here first (nothing is sent if a point is malformed), then sent in requests of
        at most `max_points` / `max_bytes`, in order, so an item's sentinel follows its points."""
        check_points(points, bundle_id=self.bundle_id, dim=self.dim, namespace=self.namespace)
        written = removed = 0
        for batch in self._batches([point_message(p) for p in points]):
            r = self._send(batch)
            written, removed = written + r.written, removed + r.removed
        return WriteResult(written, removed)

    def _batches(self, messages: list[pb.PointData]) -> Iterator[list[pb.PointData]]:
        batch: list[pb.PointData] = []
        size = 0
        for m in messages:
            n = m.ByteSize()
            if batch and (len(batch) >= self.max_points or size + n > self.max_bytes):
                yield batch
                batch, size = [], 0
            batch.append(m)
            size += n
        if batch:
            yield batch

    def _send(self, batch: list[pb.PointData]) -> pb.WritePointsResponse:
        try:
            return self.client.write_points(self.bundle_id, batch)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                served = self.client.stats().bundle_id
                raise BundleMismatchError(f"server {self.client.target}", served, self.bundle_id) from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise PointError(details or "the server refused the points") from None
            raise

    def close(self) -> None:
        return None  # the client is the caller's


def point_message(p: PointRecord) -> pb.PointData:
    """The WritePoints message of one point."""
    frames = [] if p.frames is None else np.asarray(p.frames, dtype=np.float32).ravel().tolist()
    return pb.PointData(
        id=p.id,
        vector=np.asarray(p.vector, dtype=np.float32).tolist(),
        frames=frames,
        payload_json=json.dumps(p.payload, separators=(",", ":"), ensure_ascii=False),
    )

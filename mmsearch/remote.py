"""Bulk ingest into a running server: the ingest pipeline's sink that speaks gRPC."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from indexer.inputs import ItemInput, ItemOutcome
from mmsearch import client as mc

if TYPE_CHECKING:
    from indexer.ingest import Sink


def remote_sink(client: mc.MMSearchClient) -> Sink:
    """An ingest sink that sends batches to a server's Upsert RPC; a batch over the server's
    message limit is split, and a single file over it fails alone."""

    def send(items: Sequence[ItemInput]) -> list[ItemOutcome]:
        messages = []
        for item in items:
            metadata, attributes = mc.to_struct(item.metadata), mc.to_struct(item.attributes)
            msg = mc.pb.Item(source=item.source, metadata=metadata, attributes=attributes)
            data = item.data.read_bytes() if isinstance(item.data, Path) else item.data
            if isinstance(data, str):
                msg.text = data
            else:
                setattr(msg, item.modality.value, data)  # the Item field is named after the modality
            messages.append(msg)
        try:
            resp = client.upsert(messages)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            if len(items) > 1:  # too big together: send one at a time
                return [o for item in items for o in send([item])]
            return [
                ItemOutcome(error=f"{items[0].source}: {exc.details()} (ingest it locally, without --server)")
            ]
        return [
            ItemOutcome(list(r.ids), r.media_id, r.unchanged, r.error or None, r.note or None)
            for r in resp.results
        ]

    return send

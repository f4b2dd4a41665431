"""The request context: deadlines stop a call between stages, before the work it would waste."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from encoders.embed import Embedder
from encoders.encoder import Encoder
from encoders.modality import Modality
from indexer.inputs import ItemInput
from indexer.qdrant_store import QdrantStore
from indexer.schema import CollectionSchema
from server.config import ServerConfig
from server.context import RequestContext
from server.errors import Cancelled, DeadlineExceeded
from server.planner import SearchParams
from server.query_types import QueryInput
from server.services import Services, make_services


class CountingStore(QdrantStore):
    """Counts the store round trips a call makes."""

    queries = 0
    upserts = 0

    def query_batch(self, plans):  # type: ignore[no-untyped-def]
        CountingStore.queries += 1  # every query, recommend and fusion goes through here
        return super().query_batch(plans)

    def upsert(self, points):  # type: ignore[no-untyped-def]
        CountingStore.upserts += 1
        return super().upsert(points)


@pytest.fixture
def services(encoder: Encoder) -> Iterator[Services]:
    store = CountingStore(":memory:", CollectionSchema(encoder.bundle.bundle_id, encoder.dim))
    s = make_services(Embedder(encoder), store, ServerConfig())
    s.writes.upsert(RequestContext(), [ItemInput(Modality.TEXT, "a small red boat")])
    CountingStore.queries = CountingStore.upserts = 0
    yield s
    s.close()


class ExpiresAfter(RequestContext):
    """A context whose deadline passes after `n` checks: mid-pipeline, deterministically."""

    def __init__(self, n: int) -> None:
        super().__init__(method="Search", deadline=time.monotonic() + 3600)
        self.left = n

    def check(self) -> None:
        self.left -= 1
        if self.left < 0:
            self.deadline = time.monotonic() - 1
        super().check()


def test_a_deadline_passing_during_encoding_stops_before_the_store(services: Services) -> None:
    with pytest.raises(DeadlineExceeded, match="Search passed its deadline"):
        services.queries.search(ExpiresAfter(1), QueryInput(text="boat"), SearchParams(top_k=3))
    assert CountingStore.queries == 0
    # the same call with time to spare runs the store query
    services.queries.search(RequestContext(), QueryInput(text="boat"), SearchParams(top_k=3))
    assert CountingStore.queries >= 1


def test_a_deadline_passing_during_an_upsert_writes_nothing(services: Services) -> None:
    items = [ItemInput(Modality.TEXT, f"caption number {i}") for i in range(5)]
    with pytest.raises(DeadlineExceeded):
        services.writes.upsert(ExpiresAfter(2), items)
    assert CountingStore.upserts == 0
    assert services.store.count() == 1


def test_cancel_and_remaining() -> None:
    ctx = RequestContext.with_timeout(30, request_id="r1", method="Embed")
    remaining = ctx.remaining()
    assert remaining is not None and 29 < remaining <= 30
    ctx.check()
    ctx.cancel()
    with pytest.raises(Cancelled, match="Embed was cancelled"):
        ctx.check()
    assert RequestContext().remaining() is None

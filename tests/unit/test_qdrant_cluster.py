"""The cluster settings reach Qdrant: from MMSEARCH_* variables through the server's settings and
store opening to what qdrant-client is asked to create. qdrant-client's in-process mode ignores
shards and replicas, so a recording client checks what would be sent to a real cluster."""

from __future__ import annotations

import argparse
from typing import Any, ClassVar

import pytest
from qdrant_client import QdrantClient, models

from indexer.qdrant_store import QdrantStore
from indexer.schema import KEYWORD_INDEXES, CollectionSchema, Key
from mmsearch.settings import server_config
from server.services import build_services


class RecordingClient(QdrantClient):
    """An in-process client that records how it was built and what collection it was asked for."""

    made: ClassVar[list[RecordingClient]] = []

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(location=":memory:")
        self.init_kwargs = kwargs
        self.collections: list[tuple[str, dict[str, Any]]] = []
        self.indexes: dict[str, Any] = {}
        RecordingClient.made.append(self)

    def create_collection(self, collection_name: str, **kwargs: Any) -> bool:  # type: ignore[override]
        self.collections.append((collection_name, kwargs))
        return super().create_collection(collection_name, **kwargs)

    def create_payload_index(  # type: ignore[override]
        self, collection_name: str, field_name: str, field_schema: Any = None, **kwargs: Any
    ) -> None:
        # Recorded, not forwarded: in-process mode has no payload indexes and warns about them.
        self.indexes[field_name] = field_schema


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> type[RecordingClient]:
    RecordingClient.made = []
    monkeypatch.setattr("indexer.qdrant_store.QdrantClient", RecordingClient)
    return RecordingClient


def test_cluster_settings_from_the_environment_reach_create_collection(
    recording: type[RecordingClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "MMSEARCH_QDRANT_URL": "http://qdrant-0:6333",
        "MMSEARCH_QDRANT_API_KEY": "cluster-secret",
        "MMSEARCH_COLLECTION": "media",
        "MMSEARCH_QDRANT_SHARDS": "6",
        "MMSEARCH_QDRANT_REPLICATION": "3",
        "MMSEARCH_QDRANT_WRITE_CONSISTENCY": "2",
        "MMSEARCH_DEVICE": "cpu",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    services = build_services(server_config(argparse.Namespace()))
    try:
        (client,) = recording.made
        assert client.init_kwargs["url"] == "http://qdrant-0:6333"
        assert client.init_kwargs["api_key"] == "cluster-secret"
        assert client.init_kwargs["prefer_grpc"] is True
        ((name, sent),) = client.collections
        assert name == "media"
        assert (sent["shard_number"], sent["replication_factor"], sent["write_consistency_factor"]) == (
            6,
            3,
            2,
        )
        assert set(client.indexes) == {k.value for k in KEYWORD_INDEXES}
        tenant = client.indexes[Key.TENANT]
        assert isinstance(tenant, models.KeywordIndexParams) and tenant.is_tenant is True
        assert client.indexes[Key.MODALITY] == models.PayloadSchemaType.KEYWORD
    finally:
        services.close()


def test_without_cluster_settings_qdrant_picks_its_defaults(recording: type[RecordingClient]) -> None:
    store = QdrantStore("http://qdrant:6333", CollectionSchema("b", 4))
    ((_, sent),) = recording.made[0].collections
    assert (sent["shard_number"], sent["replication_factor"], sent["write_consistency_factor"]) == (
        None,
        None,
        None,
    )
    # Opening the collection again sends nothing new (settings apply when it is created).
    QdrantStore("http://qdrant:6333", CollectionSchema("b", 4), client=recording.made[0], shard_number=9)
    assert len(recording.made[0].collections) == 1
    store.close()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"shard_number": 0}, r"shard_number \(MMSEARCH_QDRANT_SHARDS\) must be at least 1, got 0"),
        (
            {"replication_factor": -1},
            r"replication_factor \(MMSEARCH_QDRANT_REPLICATION\) must be at least 1",
        ),
        ({"replication_factor": 2, "write_consistency_factor": 3}, "exceeds the replication_factor 2"),
        ({"write_consistency_factor": 2}, "exceeds the replication_factor 1"),
    ],
)
def test_impossible_cluster_settings_are_refused_by_name(
    recording: type[RecordingClient], settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        QdrantStore("http://qdrant:6333", CollectionSchema("b", 4), **settings)
    assert recording.made == []  # refused before connecting

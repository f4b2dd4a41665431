"""The typed payload and namespaced ids."""

from __future__ import annotations

import uuid
from dataclasses import fields

from encoders.embed import Embedder
from encoders.encoder import Encoder
from encoders.modality import Modality
from indexer.inputs import ItemInput
from indexer.items import ItemIndexer
from indexer.qdrant_store import QdrantStore
from indexer.schema import DEFAULT_NAMESPACE, SYSTEM_FIELDS, CollectionSchema, Key, PointPayload, point_id


def test_payload_fields_and_keys_are_one_list() -> None:
    assert {f.name for f in fields(PointPayload)} == {k.value for k in Key}
    assert "meta" not in SYSTEM_FIELDS and "media_id" in SYSTEM_FIELDS


def test_payload_round_trip_leaves_unset_fields_out() -> None:
    p = PointPayload(
        modality="video",
        source="/lib/v.mp4",
        content_hash="abc",
        media_id="m",
        bundle_id="b1",
        meta={"tags": ["x"]},
        track="visual",
        t_start=5.0,
        t_end=10.0,
        pooled=False,
        frame_times=[5.0, 6.0],
    )
    d = p.to_dict()
    assert "text" not in d and "width" not in d and d["t_end"] == 10.0
    assert PointPayload.from_dict(d) == p
    assert PointPayload.from_dict({**d, "added_by_a_later_version": 1}) == p


def test_ids_are_namespaced_and_the_default_namespace_keeps_existing_ids() -> None:
    key = "sha256:" + "0" * 64
    legacy = str(uuid.uuid5(uuid.UUID("6b1f0a8e-2c5d-4e0f-9a51-3d7c2b8e4f10"), f"{key}#0"))
    assert point_id(key, 0) == point_id(key, 0, DEFAULT_NAMESPACE) == legacy
    assert point_id(key, 0, "tenant-a") != point_id(key, 0, "tenant-b")
    assert point_id(key, 0, "tenant-a") != legacy
    assert point_id(key, 1, "tenant-a") != point_id(key, 0, "tenant-a")


def test_identical_files_in_two_namespaces_never_share_a_point(encoder: Encoder) -> None:
    store = QdrantStore(":memory:", CollectionSchema(encoder.bundle.bundle_id, encoder.dim))
    embedder = Embedder(encoder)
    item = ItemInput(Modality.TEXT, "the same caption", source="same.txt")
    (a,) = ItemIndexer(embedder, store, namespace="tenant-a").index([item])
    (b,) = ItemIndexer(embedder, store, namespace="tenant-b").index([item])
    (d,) = ItemIndexer(embedder, store).index([item])
    assert not (set(a.ids) & set(b.ids)) and not (set(a.ids) & set(d.ids)) and a.media_id != b.media_id
    assert store.count() == 3
    tenants = {p.payload.get("tenant") for p in store.get(a.ids + b.ids + d.ids)}
    assert tenants == {"tenant-a", "tenant-b", None}

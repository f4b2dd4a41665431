from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from encoders.bundle import ModelBundle, load_bundle
from encoders.encoder import Encoder
from indexer.edge_store import EdgeStore
from indexer.qdrant_store import QdrantStore
from indexer.schema import CollectionSchema
from indexer.store import VectorStore


@pytest.fixture(scope="session", autouse=True)
def _quiet_open_clip() -> None:
    logging.getLogger().setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def tiny_bundle() -> ModelBundle:
    return load_bundle("tiny", device="cpu")


@pytest.fixture(scope="session")
def encoder(tiny_bundle: ModelBundle) -> Encoder:
    return Encoder(tiny_bundle, batch_size=8)


@pytest.fixture(params=["edge", "qdrant"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    """Builds stores of one kind; every store built is closed at the end of the test."""
    opened: list[VectorStore] = []

    def make(schema: CollectionSchema, path: Path | None = None) -> VectorStore:
        store: VectorStore
        if request.param == "edge":
            store = EdgeStore(path or tmp_path / "edge", schema)
        else:
            store = QdrantStore(":memory:", schema)
        opened.append(store)
        return store

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    for s in opened:
        with contextlib.suppress(Exception):  # already closed by the test
            s.close()

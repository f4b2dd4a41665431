"""The services behind the servicer, built once per server from one bundle and one store."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.bundle import load_bundle
from encoders.decode import MediaDecoder
from encoders.embed import Embedder
from encoders.encoder import Encoder
from indexer.items import ItemIndexer
from indexer.open import open_store
from indexer.schema import CollectionSchema
from indexer.store import VectorStore
from server.config import ServerConfig
from server.ids import IdResolver
from server.mining import MiningService
from server.queries import QueryService
from server.writes import WriteService


@dataclass
class Services:
    config: ServerConfig
    embedder: Embedder
    store: VectorStore
    queries: QueryService
    writes: WriteService
    mining: MiningService

    @property
    def bundle_id(self) -> str:
        return self.queries.bundle_id

    def close(self) -> None:
        self.embedder.close()
        self.store.close()


def make_services(embedder: Embedder, store: VectorStore, config: ServerConfig) -> Services:
    """Wire the services over an embedder and an open store (tests build them this way)."""
    ids = IdResolver(store, max_ids=config.max_ids_per_call)
    queries = QueryService(embedder, store, ids, config)
    indexer = ItemIndexer(embedder, store, max_payload_bytes=config.max_item_payload_bytes)
    writes = WriteService(indexer, store, ids, config)
    return Services(config, embedder, store, queries, writes, MiningService(queries))


def build_services(config: ServerConfig) -> Services:
    """Load the bundle and open the store. Raises BundleError / StoreError with what to do."""
    bundle = load_bundle(config.bundle, config.device)
    store = open_store(
        CollectionSchema(bundle_id=bundle.bundle_id, dim=bundle.embed_dim),
        data_dir=config.data_dir,
        qdrant_url=config.qdrant_url,
        api_key=config.qdrant_api_key,
        collection=config.collection,
        shards=config.qdrant_shards,
        replication=config.qdrant_replication,
    )
    encoder = Encoder(bundle)
    decoder = MediaDecoder(
        sample_rate=encoder.decode_sample_rate,
        max_audio_seconds=config.max_audio_seconds,
        max_video_seconds=config.max_video_seconds,
        max_frame_pixels=config.max_frame_pixels,
        memory_limit=config.decoder_memory_limit,
    )
    return make_services(Embedder(encoder, decoder), store, config)

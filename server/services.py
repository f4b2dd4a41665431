"""The services behind the servicer, built once per server from one bundle and one store."""

from __future__ import annotations

from dataclasses import dataclass, field

from encoders.bundle import ModelBundle, load_bundle
from encoders.decode import MediaDecoder
from encoders.embed import Embedder
from encoders.encoder import Encoder
from indexer.items import ItemIndexer
from indexer.open import open_store
from indexer.schema import CollectionSchema
from indexer.store import VectorStore
from indexer.tenancy import holds_tenants
from server.batched_encoder import BatchedEncoder, TextCache
from server.batching import BatchingStore, Load
from server.config import ServerConfig
from server.ids import IdResolver
from server.metrics import Metrics
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
    metrics: Metrics = field(default_factory=Metrics)
    # Calls inside the query services now: micro-batch leaders wait only while some are on their way.
    load: Load = field(default_factory=Load)

    @property
    def bundle_id(self) -> str:
        return self.queries.bundle_id

    def close(self) -> None:
        self.queries.embedder.close()
        self.embedder.close()
        self.store.close()


def make_services(
    embedder: Embedder,
    store: VectorStore,
    config: ServerConfig,
    *,
    query_decoder: MediaDecoder | None = None,
    metrics: Metrics | None = None,
    load: Load | None = None,
    scope_default: bool = True,
) -> Services:
    """Wire the services over an embedder and an open store (tests build them this way).

    Queries get their own Embedder over the same bundle: forward passes and store queries are
    micro-batched across concurrent calls, text vectors cached, and media decoded by
    `query_decoder` (worker processes apart from ingest's; default: the embedder's). A model
    swap (server.reindex) passes the running server's `metrics` and `load` on."""
    metrics, load = metrics or Metrics(), load or Load()
    wait = config.batch_max_wait_ms / 1e3
    encoder = BatchedEncoder(
        embedder.encoder,
        max_batch=config.batch_max_size,
        max_wait=wait,
        load=load,
        cache=TextCache(config.text_cache_size),
        hooks={kind: metrics.batch_hook(kind) for kind in ("text", "image", "audio")},
        on_cache=metrics.text_cache_lookups,
    )
    query_embedder = Embedder(
        encoder,
        query_decoder or embedder.decoder,
        segment_seconds=embedder.segment_seconds,
        decoded_budget=embedder.decoded_budget,
    )
    query_store = BatchingStore(
        store,
        max_batch=config.store_batch_max_size,
        max_wait=wait,
        load=load,
        on_batch=metrics.batch_hook("store"),
    )
    ids = IdResolver(store, max_ids=config.max_ids_per_call)
    queries = QueryService(
        query_embedder,
        query_store,
        IdResolver(query_store, max_ids=config.max_ids_per_call),
        config,
        scope_default=scope_default,
    )
    indexer = ItemIndexer(embedder, store, max_payload_bytes=config.max_item_payload_bytes)
    writes = WriteService(indexer, store, ids, config)
    return Services(config, embedder, store, queries, writes, MiningService(queries), metrics, load)


def build_services(
    config: ServerConfig,
    *,
    bundle: ModelBundle | None = None,
    metrics: Metrics | None = None,
    load: Load | None = None,
) -> Services:
    """Load the bundle (unless given) and open the store. Raises BundleError / StoreError with
    what to do."""
    bundle = bundle or load_bundle(config.bundle, config.device)
    store = open_store(
        CollectionSchema(bundle_id=bundle.bundle_id, dim=bundle.embed_dim),
        data_dir=config.data_dir,
        qdrant_url=config.qdrant_url,
        api_key=config.qdrant_api_key,
        collection=config.collection,
        shards=config.qdrant_shards,
        replication=config.qdrant_replication,
        write_consistency=config.qdrant_write_consistency,
    )
    embedder, query_decoder = build_embedder(bundle, config)
    # A server without keys runs every call as the default tenant, and an embedded store has no
    # other writer: with no other tenant's point in it, no query needs the default tenant's scope
    # (a filter that matches every point: 1.7x the store time of a search at 20k points).
    single_tenant = config.keys_file is None and config.qdrant_url is None and not holds_tenants(store)
    return make_services(
        embedder,
        store,
        config,
        query_decoder=query_decoder,
        metrics=metrics,
        load=load,
        scope_default=not single_tenant,
    )


def build_embedder(bundle: ModelBundle, config: ServerConfig) -> tuple[Embedder, MediaDecoder]:
    """The ingest embedder of a bundle, and the decoder of the query embedder built over it."""
    encoder = Encoder(bundle)
    decoder = MediaDecoder(
        sample_rate=encoder.decode_sample_rate,
        max_audio_seconds=config.max_audio_seconds,
        max_video_seconds=config.max_video_seconds,
        max_frame_pixels=config.max_frame_pixels,
        memory_limit=config.decoder_memory_limit,
    )
    # Query media get decoder workers of their own: a long ingest never holds up a query's decode.
    query_decoder = MediaDecoder(
        sample_rate=encoder.decode_sample_rate,
        max_audio_seconds=config.max_audio_seconds,
        max_video_seconds=config.max_video_seconds,
        max_frame_pixels=config.max_frame_pixels,
        memory_limit=config.decoder_memory_limit,
    )
    return Embedder(encoder, decoder), query_decoder

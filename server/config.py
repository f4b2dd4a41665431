"""Server configuration: one frozen dataclass, built at the edge (CLI flags, environment)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from encoders.limits import (
    DEFAULT_MAX_AUDIO_SECONDS,
    DEFAULT_MAX_FRAME_PIXELS,
    DEFAULT_MAX_VIDEO_SECONDS,
    DEFAULT_MEMORY_LIMIT,
)


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 50051
    bundle: str = "tiny"
    device: str | None = None  # None: CUDA when present, else CPU
    # Set to use a Qdrant server/cluster instead of the embedded store.
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    collection: str = "mmsearch"
    # Used when the server store creates its collection; a single-node server needs neither.
    qdrant_shards: int | None = None
    qdrant_replication: int | None = None
    qdrant_write_consistency: int | None = None  # replicas that must acknowledge a write
    # API keys (server.keys): None serves without keys, which only a loopback bind allows
    # unless `insecure` is set.
    keys_file: Path | None = None
    insecure: bool = False
    # TLS on the port; with a client CA, clients must present a certificate it signed (mTLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    max_top_k: int = 1000
    max_batch_items: int = 256
    max_message_bytes: int = 64 * 1024 * 1024
    # Caps that bound what one request can cost before any work starts (see server.limits).
    max_query_text_chars: int = 20_000
    max_item_text_chars: int = 200_000
    max_filter_conditions: int = 256
    max_ids_per_call: int = 1024
    max_metadata_bytes: int = 64 * 1024
    max_metadata_depth: int = 8
    max_source_chars: int = 4096
    # An item's metadata is stored on each of its points (every chunk of a long text): this
    # bounds metadata x points, the payload one item may add.
    max_item_payload_bytes: int = 64 * 1024 * 1024
    # Media decoding (encoders.limits): checked on the header and again while decoding.
    max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS
    max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS
    decoder_memory_limit: int = DEFAULT_MEMORY_LIMIT  # bytes of address space per decoder worker
    # Admission control (server.admission): calls running at once per lane and queued behind
    # them; past both, a call is refused at once (RESOURCE_EXHAUSTED). Heavy queries (media,
    # long texts, wide pages) and writes have lanes of their own, sharing one queue bound each.
    max_concurrent_rpcs: int = 64
    max_queued_rpcs: int = 32
    max_concurrent_heavy_rpcs: int = 1
    max_concurrent_writes: int = 1
    max_queued_heavy_rpcs: int = 16
    # No call runs longer than this, whatever deadline (or none) the client sent.
    max_deadline_seconds: float = 300.0
    # Per API key (one bucket for a server without keys); 0 turns rate limiting off.
    rate_limit_per_second: float = 0.0
    rate_limit_burst: int = 0  # 0: one second's worth of calls
    # Micro-batching of query encoding and store queries (server.batching): a batch leader
    # waits at most this long for other calls, and takes at most this many inputs.
    batch_max_size: int = 32
    batch_max_wait_ms: float = 2.0
    text_cache_size: int = 10_000  # text query vectors kept (LRU); 0 turns the cache off
    # Query plans per store batch. The embedded engine holds the GIL for a whole batch, stalling
    # the event loop for as long: keep these batches short.
    store_batch_max_size: int = 8
    # Prometheus metrics over HTTP (server.metrics): None serves none, 0 picks a free port.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    log_format: str = "text"  # "json": one JSON object per line (server.logs)
    # Torch intra-op threads on CPU; 0: half the cores (at least one). The batch leader runs the
    # towers while the event loop, store queries and decoders need the other cores: a tower
    # spread over every core stalls whenever one of them is taken.
    torch_threads: int = 0
    # Seconds in-flight RPCs get to finish after SIGTERM.
    grace_seconds: float = 10.0
    # How often the embedded store's pending HNSW builds are checked for.
    optimize_interval_seconds: float = 5.0
    # Remote ingest (server.ingest): streams running at once (later ones wait), bytes of received
    # files waiting for the pipeline before the server stops reading a stream, where they are
    # spooled (None: the system's temp folder), and decode worker processes per stream (None:
    # one per core, as a local ingest).
    ingest_streams: int = 1
    ingest_spool_bytes: int = 256 * 1024 * 1024
    ingest_spool_dir: Path | None = None
    ingest_decode_workers: int | None = None

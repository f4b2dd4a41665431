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
    # Seconds in-flight RPCs get to finish after SIGTERM.
    grace_seconds: float = 10.0
    # How often the embedded store's pending HNSW builds are checked for.
    optimize_interval_seconds: float = 5.0

"""Settings built at the edge: CLI flags over environment variables over defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from server.config import ServerConfig

ENV_PREFIX = "MMSEARCH_"
LIMIT_SETTINGS = (
    "max_query_text_chars",
    "max_item_text_chars",
    "max_filter_conditions",
    "max_ids_per_call",
    "max_metadata_bytes",
    "max_metadata_depth",
    "max_source_chars",
    "max_item_payload_bytes",
    "max_batch_items",
    "max_frame_pixels",
    "decoder_memory_limit",
    # admission control and micro-batching (server.admission, server.batching)
    "max_concurrent_rpcs",
    "max_queued_rpcs",
    "max_concurrent_heavy_rpcs",
    "max_concurrent_writes",
    "max_queued_heavy_rpcs",
    "rate_limit_burst",
    "batch_max_size",
    "text_cache_size",
    "store_batch_max_size",
    "torch_threads",
    # remote ingest (server.ingest)
    "ingest_streams",
    "ingest_spool_bytes",
)
FLOAT_LIMIT_SETTINGS = (
    "max_audio_seconds",
    "max_video_seconds",
    "max_deadline_seconds",
    "rate_limit_per_second",
    "batch_max_wait_ms",
)


def server_config(args: argparse.Namespace) -> ServerConfig:
    """A ServerConfig from parsed `serve` / local-mode flags; unset flags fall back to MMSEARCH_* env."""
    base = ServerConfig()
    env = os.environ

    def pick(flag: object, name: str, default: object) -> object:
        if flag is not None:
            return flag
        return env.get(ENV_PREFIX + name, default)

    return replace(
        base,
        data_dir=Path(str(pick(getattr(args, "data", None), "DATA", base.data_dir))),
        host=str(pick(getattr(args, "host", None), "HOST", base.host)),
        port=int(str(pick(getattr(args, "port", None), "PORT", base.port))),
        bundle=str(pick(getattr(args, "bundle", None), "BUNDLE", base.bundle)),
        device=_opt(pick(getattr(args, "device", None), "DEVICE", None)),
        qdrant_url=_opt(pick(getattr(args, "qdrant_url", None), "QDRANT_URL", None)),
        # Secrets come from the environment only, never from flags (they would show in `ps`).
        qdrant_api_key=env.get(ENV_PREFIX + "QDRANT_API_KEY") or None,
        collection=str(pick(getattr(args, "collection", None), "COLLECTION", base.collection)),
        max_top_k=int(str(pick(getattr(args, "max_top_k", None), "MAX_TOP_K", base.max_top_k))),
        max_message_bytes=int(env.get(ENV_PREFIX + "MAX_MESSAGE_BYTES", base.max_message_bytes)),
        grace_seconds=float(env.get(ENV_PREFIX + "GRACE_SECONDS", base.grace_seconds)),
        # Request and media caps (server.limits, encoders.limits): MMSEARCH_MAX_QUERY_TEXT_CHARS, ...
        **_caps(env),
        qdrant_shards=_opt_int(env.get(ENV_PREFIX + "QDRANT_SHARDS")),
        qdrant_replication=_opt_int(env.get(ENV_PREFIX + "QDRANT_REPLICATION")),
        qdrant_write_consistency=_opt_int(env.get(ENV_PREFIX + "QDRANT_WRITE_CONSISTENCY")),
        ingest_spool_dir=_opt_path(env.get(ENV_PREFIX + "INGEST_SPOOL_DIR")),
        ingest_decode_workers=_opt_int(env.get(ENV_PREFIX + "INGEST_DECODE_WORKERS")),
        keys_file=_opt_path(pick(getattr(args, "keys_file", None), "KEYS_FILE", None)),
        insecure=bool(getattr(args, "insecure", False)) or _flag(env, "INSECURE"),
        tls_cert=_opt_path(pick(getattr(args, "tls_cert", None), "TLS_CERT", None)),
        tls_key=_opt_path(pick(getattr(args, "tls_key", None), "TLS_KEY", None)),
        tls_client_ca=_opt_path(pick(getattr(args, "tls_client_ca", None), "TLS_CLIENT_CA", None)),
        metrics_port=_opt_int(_opt(pick(getattr(args, "metrics_port", None), "METRICS_PORT", None))),
        metrics_host=str(env.get(ENV_PREFIX + "METRICS_HOST", base.metrics_host)),
        log_format=str(pick(getattr(args, "log_format", None), "LOG_FORMAT", base.log_format)),
    )


def _caps(env: Mapping[str, str]) -> dict[str, Any]:
    caps: dict[str, Any] = {}
    for names, kind in ((LIMIT_SETTINGS, int), (FLOAT_LIMIT_SETTINGS, float)):
        for name in names:
            value = env.get(ENV_PREFIX + name.upper())
            if value is not None:
                caps[name] = kind(value)
    return caps


def _opt_int(value: str | None) -> int | None:
    return int(value) if value else None


def _opt_path(value: object) -> Path | None:
    return None if value in (None, "") else Path(str(value))


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(ENV_PREFIX + name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{ENV_PREFIX}{name}={value!r}: expected 1/true/yes/on or 0/false/no/off")


def _opt(value: object) -> str | None:
    return None if value in (None, "") else str(value)

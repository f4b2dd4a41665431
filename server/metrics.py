"""Prometheus metrics of one server, in a registry of its own (several servers in one process,
as in tests, never share or collide), served over HTTP by prometheus-client's own exporter."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Seconds: from a cached tiny query (~1 ms) to a long media decode (a minute).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class MetricsEndpoint:
    """A running exporter: where it listens, and how to stop it."""

    server: WSGIServer
    thread: threading.Thread
    host: str
    port: int

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Metrics:
    """Every metric the server exports. Label values are fixed sets (method names, status
    codes, stage and lane names, modalities), never client data, so series stay bounded."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rpc_seconds = Histogram(
            "mmsearch_rpc_duration_seconds",
            "RPC latency as the server saw it, by method and status code",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "mmsearch_stage_duration_seconds",
            "Time in each stage of a call: queue (admission wait), encode, search, group",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "mmsearch_batch_size",
            "Items per micro-batch (text, image, audio: inputs per forward pass; store: query plans)",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_calls = Histogram(
            "mmsearch_batch_calls",
            "Concurrent calls served by one micro-batch",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "mmsearch_batch_duration_seconds",
            "Time one micro-batch takes to run",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "mmsearch_in_flight_rpcs", "Calls admitted and running, by lane", ["lane"], registry=r
        )
        self.queue_depth = Gauge(
            "mmsearch_queue_depth", "Calls waiting for admission, by lane", ["lane"], registry=r
        )
        self.rejections = Counter(
            "mmsearch_rejections",
            "Calls refused before any work: busy, queue_full, rate_limited, message_too_large, "
            "deadline_in_queue, shutting_down",
            ["reason"],
            registry=r,
        )
        self.items_ingested = Counter(
            "mmsearch_items_ingested",
            "Items written (new or changed), by modality",
            ["modality"],
            registry=r,
        )
        self.loop_lag = Histogram(
            "mmsearch_event_loop_lag_seconds",
            "How late the event loop runs a timer: time no call can be accepted, refused or answered",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.text_cache = Counter(
            "mmsearch_text_cache_lookups",
            "Text query embedding cache lookups, by result (hit, miss)",
            ["result"],
            registry=r,
        )

    def batch_hook(self, kind: str) -> BatchRecorder:
        """A MicroBatcher `on_batch` callback that records under `kind`."""
        return BatchRecorder(self, kind)

    def text_cache_lookups(self, hits: int, misses: int) -> None:
        if hits:
            self.text_cache.labels("hit").inc(hits)
        if misses:
            self.text_cache.labels("miss").inc(misses)

    def observe_stages(self, stage_ms: dict[str, float]) -> None:
        for stage, ms in stage_ms.items():
            self.stage_seconds.labels(stage).observe(ms / 1e3)

    async def watch_loop(self, stop: asyncio.Event, every: float = 0.1) -> None:
        """Sample the running loop's lag until `stop` is set."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            start = loop.time()
            await asyncio.sleep(every)
            self.loop_lag.observe(max(0.0, loop.time() - start - every))

    def serve(self, host: str, port: int) -> MetricsEndpoint:
        """Serve /metrics on host:port (0: a free port) from a daemon thread."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsEndpoint(server, thread, host, int(server.server_address[1]))


class BatchRecorder:
    def __init__(self, metrics: Metrics, kind: str) -> None:
        self._size = metrics.batch_size.labels(kind)
        self._calls = metrics.batch_calls.labels(kind)
        self._seconds = metrics.batch_seconds.labels(kind)

    def __call__(self, items: int, calls: int, seconds: float) -> None:
        self._size.observe(items)
        self._calls.observe(calls)
        self._seconds.observe(seconds)

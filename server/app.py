"""Building and running the grpc.aio server: service, health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mmsearch.v1 import search_pb2 as pb
from mmsearch.v1 import search_pb2_grpc as pb_grpc
from server.auth import AuthInterceptor, check_exposure, server_credentials
from server.calls import CallInterceptor
from server.config import ServerConfig
from server.interceptors import RequestIdInterceptor
from server.logs import install_request_ids
from server.metrics import MetricsEndpoint
from server.reindex import follow_live
from server.service import SearchService
from server.services import Services, build_services

log = logging.getLogger("mmsearch.server")
# After the grace period, how long call threads get to reach a check before the process exits.
EXIT_WAIT_SECONDS = 3.0
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SearchService"].full_name
SWITCH_INTERVAL_SECONDS = 0.001


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    service: SearchService
    metrics: MetricsEndpoint | None = None  # the Prometheus exporter, when metrics_port is set


async def start_server(services: Services, config: ServerConfig) -> RunningServer:
    limit = config.max_message_bytes
    keys = check_exposure(config)
    # Auth after the request id, so a refused call still has its id and its access-log line.
    interceptors: list[grpc.aio.ServerInterceptor] = [RequestIdInterceptor(services.metrics)]
    if keys is not None:
        interceptors.append(AuthInterceptor(keys))
    service = SearchService(services)
    # Last: only calls let through count toward a services generation and the write gate that a
    # model swap waits on (server.calls).
    interceptors.append(CallInterceptor(service.calls))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # Without this a second server on the same port starts too, and new connections are
            # split between two indexes; with it, the second one fails to bind.
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_SearchServiceServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    try:
        address = f"{config.host}:{config.port}"
        credentials = server_credentials(config)
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpc raises rather than returning 0 on some versions
        raise OSError(f"could not bind {config.host}:{config.port}: is another server using it?") from exc
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}: is another server using it?")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    endpoint = None
    if config.metrics_port is not None:
        endpoint = services.metrics.serve(config.metrics_host, config.metrics_port)
        log.info("metrics on http://%s:%d/metrics", endpoint.host, endpoint.port)
    return RunningServer(server, health_servicer, port, service, endpoint)


async def drain(running: RunningServer, deadline: float) -> None:
    """Shutdown, in order: refuse new calls (UNAVAILABLE, so clients retry another replica),
    report NOT_SERVING to health checks (which are still answered), let admitted and queued
    calls finish until `deadline` (loop time), then stop the server, cancelling what is left."""
    loop = asyncio.get_running_loop()
    admission = running.service.admission
    admission.close()
    await running.health.enter_graceful_shutdown()
    while admission.busy() and loop.time() < deadline:
        await asyncio.sleep(0.02)
    await running.server.stop(max(0.0, deadline - loop.time()))
    running.service.shutdown()
    if running.metrics is not None:
        running.metrics.close()


async def _optimize_loop(
    current: Callable[[], Services], interval: float, stop: asyncio.Event, pool: ThreadPoolExecutor
) -> None:
    # The embedded engine builds HNSW only when asked; do it in the background after writes.
    # On its own thread, not asyncio's default pool, which asyncio.run joins without a limit:
    # an index build must not hold the exit past the grace period.
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        if stop.is_set():
            return
        try:
            # The services of the moment: a model swap (server.reindex) replaces them.
            await loop.run_in_executor(pool, current().writes.optimize_if_dirty)
        except Exception:  # a failed index build must not stop the server; queries still work unindexed
            log.exception("background optimize failed")


def use_torch_threads(setting: int) -> int:
    """Set torch's intra-op threads for this process (the server's, never at import): `setting`,
    or half the cores (at least one) for 0. Returns the number set."""
    import torch

    threads = setting if setting > 0 else max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(threads)
    return threads


async def serve(config: ServerConfig, *, on_ready: Callable[[int], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain in-flight calls for `grace_seconds`."""
    install_request_ids(log_format=config.log_format)
    use_torch_threads(config.torch_threads)
    # The event loop shares the GIL with the call threads; at the default 5 ms switch interval a
    # busy thread holds off every accept, refusal and reply for up to 5 ms a time.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    check_exposure(config, warn=False)  # before the bundle loads: a refused setting fails at once
    services = build_services(config)
    optimize_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmsearch-optimize")
    close_store = True
    running: RunningServer | None = None
    try:
        running = await start_server(services, config)
        service = running.service
        # The models, tokenizer and libraries loaded so far (some 400,000 objects) live as long
        # as the process: out of the collector's sight, a full collection no longer stalls every
        # call for a third of a second to find them all alive.
        gc.collect()
        gc.freeze()
        if on_ready is not None:
            on_ready(running.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        lag = asyncio.create_task(services.metrics.watch_loop(stop))
        optimizer = asyncio.create_task(
            _optimize_loop(lambda: service.services, config.optimize_interval_seconds, stop, optimize_pool)
        )
        # Replicas over one Qdrant deployment follow a switch made elsewhere (returns at `stop`).
        follower = (
            asyncio.create_task(follow_live(service, stop, optimize_pool)) if config.qdrant_url else None
        )
        await stop.wait()
        deadline = loop.time() + config.grace_seconds
        log.info("shutting down: draining in-flight calls for up to %.0f s", config.grace_seconds)
        # Calls accepted before the signal finish within the grace period; after it they are
        # cancelled, and their threads stop at the next check (server.context).
        await drain(running, deadline)
        lag.cancel()
        if follower is not None:
            follower.cancel()
        done, _ = await asyncio.wait({optimizer}, timeout=max(0.0, deadline - loop.time()))
        if not done:
            # Every acknowledged write is already in the store's write-ahead log; the index
            # build is redone after the restart.
            log.warning("exiting during a background index build; it resumes after the restart")
            close_store = False
    finally:
        optimize_pool.shutdown(wait=False)
        if close_store:
            (running.service.services if running is not None else services).close()


def run(config: ServerConfig, *, on_ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM / SIGINT, then exit within the grace period plus a few seconds."""
    # From here on, log lines are written by a thread of their own (server.logs).
    logs = install_request_ids(log_format=config.log_format, background=True)
    try:
        asyncio.run(serve(config, on_ready=on_ready))
    except BaseException:
        if logs is not None:
            logs.stop()
        raise
    lingering = [
        t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    end = time.monotonic() + EXIT_WAIT_SECONDS
    for t in lingering:
        t.join(timeout=max(0.0, end - time.monotonic()))
    if any(t.is_alive() for t in lingering):
        # A call's thread is still inside one step (say, a decode waiting on its worker). The
        # store is closed and every acknowledged write is durable: do not let the interpreter
        # wait for it.
        log.warning(
            "exiting with %d call thread(s) still finishing a step", sum(t.is_alive() for t in lingering)
        )
        if logs is not None:
            logs.stop()
        logging.shutdown()
        os._exit(0)
    if logs is not None:
        logs.stop()

"""Building and running the grpc.aio server: service, health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mmsearch.v1 import search_pb2 as pb
from mmsearch.v1 import search_pb2_grpc as pb_grpc
from server.config import ServerConfig
from server.interceptors import RequestIdInterceptor
from server.logs import install_request_ids
from server.service import SearchService
from server.services import Services, build_services

log = logging.getLogger("mmsearch.server")
# After the grace period, how long call threads get to reach a check before the process exits.
EXIT_WAIT_SECONDS = 3.0
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SearchService"].full_name


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    service: SearchService


async def start_server(services: Services, config: ServerConfig) -> RunningServer:
    limit = config.max_message_bytes
    server = grpc.aio.server(
        interceptors=[RequestIdInterceptor()],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # Without this a second server on the same port starts too, and new connections are
            # split between two indexes; with it, the second one fails to bind.
            ("grpc.so_reuseport", 0),
        ],
    )
    service = SearchService(services)
    pb_grpc.add_SearchServiceServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    try:
        port = server.add_insecure_port(f"{config.host}:{config.port}")
    except RuntimeError as exc:  # grpc raises rather than returning 0 on some versions
        raise OSError(f"could not bind {config.host}:{config.port}: is another server using it?") from exc
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}: is another server using it?")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, health_servicer, port, service)


async def _optimize_loop(services: Services, interval: float, stop: asyncio.Event) -> None:
    # The embedded engine builds HNSW only when asked; do it in the background after writes.
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        if stop.is_set():
            return
        try:
            await asyncio.to_thread(services.writes.optimize_if_dirty)
        except Exception:  # a failed index build must not stop the server; queries still work unindexed
            log.exception("background optimize failed")


async def serve(config: ServerConfig, *, on_ready: Callable[[int], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain in-flight calls for `grace_seconds`."""
    install_request_ids()
    services = build_services(config)
    try:
        running = await start_server(services, config)
        if on_ready is not None:
            on_ready(running.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        optimizer = asyncio.create_task(_optimize_loop(services, config.optimize_interval_seconds, stop))
        await stop.wait()
        log.info("shutting down: draining in-flight calls for up to %.0f s", config.grace_seconds)
        await running.health.enter_graceful_shutdown()
        # Calls accepted before the signal finish within the grace period; after it they are
        # cancelled, and their threads stop at the next check (server.context).
        await running.server.stop(config.grace_seconds)
        running.service.shutdown()
        await optimizer
    finally:
        services.close()


def run(config: ServerConfig, *, on_ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM / SIGINT, then exit within the grace period plus a few seconds."""
    asyncio.run(serve(config, on_ready=on_ready))
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
        logging.shutdown()
        os._exit(0)

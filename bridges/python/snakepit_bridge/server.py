"""Run a handler as a bridge: the Bridge and Health services on a Unix socket.

Lifecycle: bind, start, then report SERVING on the health service (so the pool
sends work only to a bridge that can take it). SIGTERM/SIGINT, or the death of
the owning process (``parent_pid``), stop it: health goes NOT_SERVING, running
streams are cancelled, unary calls get a short grace, sessions end, and the
socket file is removed.

NOTE: no gRPC object may exist before :func:`serve` runs. A preload zygote
imports this module and the handler and then forks; gRPC's core cannot cross
a fork once it has started, so everything gRPC is created here, in the child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from snakepit_bridge.aio import LoopThread
from snakepit_bridge.handler import Handler
from snakepit_bridge.parentwatch import watch_parent
from snakepit_bridge.rawexec import add_servicer
from snakepit_bridge.service import BridgeService

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_MAX_WORKERS", "SERVICE_NAME", "STOP_GRACE", "serve"]

log = logging.getLogger(__name__)

#: Largest argument or result document, as the pool's default.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: gRPC worker threads: concurrent calls (each running stream holds one).
DEFAULT_MAX_WORKERS = 16
#: Seconds running unary calls get to finish after a stop request.
STOP_GRACE = 2.0
#: The full name of the Bridge service, as the health service reports it.
SERVICE_NAME = "snakepit.bridge.v1.Bridge"
#: Room for the protobuf framing around a payload of the maximum size.
_FRAMING = 64 * 1024


def serve(
    handler: Handler,
    socket_path: str,
    *,
    parent_pid: int | None = None,
    run_id: str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    allowed_modules: Iterable[str] = (),
    max_workers: int = DEFAULT_MAX_WORKERS,
) -> int:
    """Serve ``handler`` on ``unix:<socket_path>`` until stopped; return the exit code.

    Args:
        handler: the commands to serve.
        socket_path: the Unix socket file (its directory must exist).
        parent_pid: stop when this process exits (the pool's worker).
        run_id: the pool's run id, for logs.
        max_message_bytes: largest arguments/result/chunk accepted or sent.
        allowed_modules: modules the generic Python call API may import.
        max_workers: gRPC worker threads.

    Returns:
        0 after a clean stop (SIGTERM, SIGINT or the parent's death).

    Example::

        from snakepit_bridge.server import serve
        from snakepit_bridge.showcase import ShowcaseHandler
        raise SystemExit(serve(ShowcaseHandler(), "/tmp/bridge.sock"))
    """
    started = time.monotonic()
    stop = threading.Event()
    reason: list[str] = []

    def request_stop(why: str) -> None:
        if not reason:
            reason.append(why)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda num, _frame: request_stop(signal.Signals(num).name))

    handler.allowed_modules = frozenset(allowed_modules)
    loop = LoopThread()
    service = BridgeService(handler, max_message_bytes=max_message_bytes, loop=loop)
    service.stopping = stop  # a batch starts no item once the bridge is stopping
    if any(cmd.is_async for cmd in service.commands.values()):
        _ = loop.loop  # start it now rather than inside the first call

    limit = max_message_bytes + _FRAMING
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="snakepit-rpc"),
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ],
    )
    add_servicer(service, server)  # Execute's big messages on wire bytes (rawexec)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    try:
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        if parent_pid:
            watch_parent(parent_pid, lambda: request_stop(f"parent {parent_pid} exited"))
        log.info(
            "bridge pid %d serving %s on %s (run %s) in %.3fs",
            os.getpid(),
            type(handler).__qualname__,
            socket_path,
            run_id or "-",
            time.monotonic() - started,
        )
        while not stop.wait(1.0):
            pass
        log.info("bridge pid %d stopping: %s", os.getpid(), reason[0] if reason else "stop requested")
    finally:
        health_servicer.enter_graceful_shutdown()
        service.cancel_streams()
        server.stop(STOP_GRACE).wait()
        service.sessions.end_all()
        loop.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
    return 0

"""One bridge: its process, its gRPC channel and stub, its life until reaped.

A bridge is launched (spawned from a :class:`LaunchSpec`, or forked by a
zygote), waited for until the stock ``grpc.health.v1`` service says SERVING,
and from then on called through one channel and one set of stub callables
that live as long as the process. The pool decides when a bridge is killed;
this module only knows how.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from snakepit_bridge._proto import bridge_pb2, bridge_pb2_grpc

from snakepit_celery.engine.adapters.base import LaunchSpec
from snakepit_celery.engine.process import ProcessHandle, SpawnedProcess, describe_status
from snakepit_celery.engine.rpc import channel_options
from snakepit_celery.errors import BridgeStartError

__all__ = ["Bridge", "spawn_process"]

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_SERVING = health_pb2.HealthCheckResponse.SERVING
#: Seconds between looks for the bridge's socket file while it starts.
_SOCKET_POLL = 0.004
#: How long a reopened unary channel may take to connect (the bridge is running).
_REOPEN_TIMEOUT = 1.0


def spawn_process(spec: LaunchSpec) -> SpawnedProcess:
    """Start a bridge process from its launch spec.

    The bridge gets its own session, so a Ctrl-C meant for the worker's
    terminal does not kill bridges behind the pool's back; it still dies with
    the worker because it watches the worker's pid (``--parent-pid``).

    Raises:
        BridgeStartError: the executable cannot be run.
    """
    try:
        popen = subprocess.Popen(
            spec.argv,
            env=spec.env,
            cwd=spec.cwd,
            stdin=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
        )
    except OSError as exc:
        raise BridgeStartError(f"cannot run bridge {spec.argv[0]!r}: {exc}") from None
    return SpawnedProcess(popen)


class Bridge:
    """A running bridge process and its channel.

    Attributes other than the callables are read under the pool's lock; the
    callables themselves are thread-safe gRPC multi-callables.
    """

    def __init__(self, process: ProcessHandle, *, socket_path: str, max_message_bytes: int) -> None:
        #: The process handle (spawned or forked).
        self.process = process
        #: Its pid, for stats and logs.
        self.pid = process.pid
        #: The Unix socket it serves on.
        self.socket_path = socket_path
        self.max_message_bytes = max_message_bytes
        #: ``time.monotonic()`` at launch and when it reported SERVING.
        self.launched_at = time.monotonic()
        self.serving_at: float | None = None
        #: Calls this bridge has run.
        self.requests = 0
        #: Sessions initialised on this very process (InitSession was run).
        self.sessions: set[str] = set()
        #: Why it ended, once it has ended.
        self.exit_reason: str | None = None
        self.exited = False
        #: The pool slot it serves (set by the pool).
        self.slot: Any = None
        self._channel: grpc.Channel | None = None
        #: The channel of ``execute_raw`` alone, so that closing it interrupts
        #: the one unary call the bridge runs and nothing else (see ``interrupt_execute``).
        self._unary_channel: grpc.Channel | None = None
        self.execute_call: Any = None
        self.execute_raw: Any = None
        self.batch_call: Any = None
        self.stream_call: Any = None
        self.init_session_call: Any = None
        self.end_session_call: Any = None
        self.describe_call: Any = None

    def __repr__(self) -> str:
        return f"<Bridge pid={self.pid} {self.socket_path}>"

    # -- start ---------------------------------------------------------------

    def _fail(self, why: str) -> BridgeStartError:
        return BridgeStartError(f"bridge pid {self.pid} on {self.socket_path} {why}")

    def wait_serving(self, deadline: float) -> float:
        """Block until the health service says SERVING; returns the start-up time.

        Raises:
            BridgeStartError: the process exited, or ``deadline`` (monotonic) passed.
        """
        while not os.path.exists(self.socket_path):
            if self.process.has_exited(_SOCKET_POLL):
                raise self._fail(f"exited before serving ({describe_status(self.process.reap())})")
            if time.monotonic() > deadline:
                raise self._fail("did not create its socket in time")
        channel = grpc.insecure_channel(
            f"unix:{self.socket_path}", options=channel_options(self.max_message_bytes)
        )
        self._channel = channel
        health = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        request = health_pb2.HealthCheckRequest(service="")
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail("did not report SERVING in time")
            try:
                reply = health(request, timeout=min(remaining, 1.0), wait_for_ready=True)
                if reply.status == _SERVING:
                    break
            except grpc.RpcError:
                pass
            if self.process.has_exited(0.005):
                raise self._fail(f"exited before serving ({describe_status(self.process.reap())})")
        stub = bridge_pb2_grpc.BridgeStub(channel)
        self.execute_call = stub.Execute
        self.open_unary_channel(max(deadline - time.monotonic(), _SOCKET_POLL))
        self.batch_call = stub.ExecuteBatch
        self.stream_call = stub.ExecuteStream
        self.init_session_call = stub.InitSession
        self.end_session_call = stub.EndSession
        self.describe_call = stub.Describe
        self.serving_at = time.monotonic()
        return self.serving_at - self.launched_at

    # -- calls ---------------------------------------------------------------

    def open_unary_channel(self, timeout: float = _REOPEN_TIMEOUT) -> None:
        """(Re)open the channel of ``execute_raw``: Execute on wire bytes both ways
        (see ``rpc.execute_request``), so big blobs are copied once.

        A blocking grpcio call has no handle another thread could cancel, and a
        future costs a thread per call (grpcio starts its channel's event thread
        whenever no call is in flight). The unary calls therefore block on a
        channel of their own, which :meth:`interrupt_execute` closes: the bridge
        runs one unary call at a time, so that cancels exactly it.

        The channel is connected here (one health check, within ``timeout``),
        as the main one is at start: a call then fails as a crash when the
        bridge dies under it, not as one that never reached the bridge.
        """
        channel = grpc.insecure_channel(
            f"unix:{self.socket_path}", options=channel_options(self.max_message_bytes)
        )
        old, self._unary_channel = self._unary_channel, channel
        self.execute_raw = channel.unary_unary("/snakepit.bridge.v1.Bridge/Execute")
        if old is not None:
            old.close()
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        with contextlib.suppress(grpc.RpcError):  # a dead bridge (refused at once): its next call says so
            check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)

    def interrupt_execute(self) -> None:
        """Cancel the unary call in flight (from any thread): its channel is closed, the
        call fails with ``CANCELLED`` and the bridge sees the cancel. The caller that
        owns the call reopens the channel (:meth:`open_unary_channel`) before the
        bridge serves again."""
        channel = self._unary_channel
        if channel is not None:
            channel.close()

    def init_session(self, session_id: str, data: bridge_pb2.Payload, timeout: float | None) -> None:
        self.init_session_call(
            bridge_pb2.InitSessionRequest(session_id=session_id, data=data), timeout=timeout
        )
        self.sessions.add(session_id)

    def end_session(self, session_id: str, timeout: float | None) -> bool:
        reply = self.end_session_call(bridge_pb2.EndSessionRequest(session_id=session_id), timeout=timeout)
        self.sessions.discard(session_id)
        return bool(reply.existed)

    def open_stream(
        self, request: bridge_pb2.ExecuteRequest, timeout: float | None, metadata: Any = None
    ) -> Iterator[Any]:
        return self.stream_call(request, timeout=timeout, metadata=metadata)  # type: ignore[no-any-return]

    def active_calls(self, timeout: float) -> int | None:
        """Calls whose command still runs on the bridge (Describe), or None if it did not answer.

        A bridge of an older protocol revision has no such field and reports 0.
        """
        try:
            reply = self.describe_call(bridge_pb2.DescribeRequest(), timeout=timeout)
        except grpc.RpcError:
            return None
        return int(reply.active_calls)

    # -- process -------------------------------------------------------------

    def rss_bytes(self) -> int | None:
        """Resident memory of the process, or None when it is gone."""
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * _PAGE_SIZE
        except (OSError, IndexError, ValueError):
            return None

    def known_dead(self) -> bool:
        """True once the process is known to have exited; cheap and never waits.

        The supervisor's flag first, else one ``poll(2)`` on the pidfd: the
        flag lags the death by as long as the supervisor takes to reap, which
        is the window in which an idle bridge could otherwise be handed out.
        """
        return self.exited or self.process.exited_now()

    @property
    def channel_closed(self) -> bool:
        """The channel was dropped (the process was seen to exit); nothing can be sent on it."""
        return self._channel is None and self.serving_at is not None

    def uptime(self) -> float:
        return time.monotonic() - (self.serving_at or self.launched_at)

    def kill(self) -> None:
        """SIGKILL; a process already gone is fine."""
        self.process.kill()

    def terminate(self) -> None:
        """SIGTERM; a process already gone is fine."""
        self.process.terminate()

    def close_channel(self) -> None:
        """Drop the channel (idempotent); in-flight calls on it fail at once."""
        channel, self._channel = self._channel, None
        unary, self._unary_channel = self._unary_channel, None
        for each in (channel, unary):
            if each is not None:
                each.close()

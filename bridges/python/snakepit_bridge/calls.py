"""One call's way through a command: look up, bind, run, encode.

Execute, ExecuteStream and ExecuteBatch share these steps, so a batch item
goes through the very path of an Execute (argument binding, session state,
soft deadline, error classification). They live here, below both the gRPC
service and the batch runner, so that neither imports the other.

:class:`ActiveCalls` counts the calls whose handler code still runs (Describe's
``active_calls``): a cancelled call is over for gRPC at once, but its command
may go on, and the pool must not hand the bridge to the next caller while so.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from snakepit_bridge import tracing, wire
from snakepit_bridge._proto import bridge_pb2
from snakepit_bridge.aio import LoopThread
from snakepit_bridge.commands import Command, Failure, discover, failure_from
from snakepit_bridge.handler import BridgeStats, CallContext, Handler, reset_context, set_context
from snakepit_bridge.sessions import SessionTable

__all__ = ["ActiveCalls", "CallHold", "CallRunner", "on_end"]


class ActiveCalls:
    """The number of calls whose handler code is still running (Describe's ``active_calls``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: Calls with at least one part still running.
        self.count = 0

    def open(self) -> CallHold:
        """Count a new call, held by the gRPC thread that took it."""
        return CallHold(self)


class CallHold:
    """One call's place in the count, shared by the parts of it that run.

    The gRPC thread holds it while it runs the command; an async command's
    task and a stream's producer take a hold of their own, because either
    may outlive the gRPC call after a cancel. The last release uncounts it.
    """

    __slots__ = ("_holders", "_owner")

    def __init__(self, owner: ActiveCalls) -> None:
        self._owner = owner
        self._holders = 1
        with owner.lock:
            owner.count += 1

    def hold(self) -> None:
        owner = self._owner
        with owner.lock:
            if self._holders == 0:  # NOTE: never expected; keeps the count exact if it happens
                owner.count += 1
            self._holders += 1

    def release(self) -> None:
        owner = self._owner
        with owner.lock:
            self._holders -= 1
            if self._holders == 0:
                owner.count -= 1


class CallRunner:
    """A handler's commands and the steps every call of them takes.

    The gRPC service is one (it adds the RPCs); the batch runner takes one
    and drives its steps item by item.
    """

    def __init__(self, handler: Handler, *, max_message_bytes: int, loop: LoopThread) -> None:
        self.handler = handler
        self.commands: dict[str, Command] = discover(handler)
        self.stats = BridgeStats()
        handler.stats = self.stats
        self.sessions = SessionTable(handler, self.stats)
        self.max_message_bytes = max_message_bytes
        self.loop = loop
        #: Set when the bridge stops (SIGTERM, its parent's death): a batch then
        #: starts no further item, since nobody may be left to take the answer.
        self.stopping = threading.Event()
        self.active = ActiveCalls()

    def detail(self, failure: Failure) -> bridge_pb2.ErrorDetail:
        """The wire form of a failure (counted as an error)."""
        self.stats.errors += 1
        return bridge_pb2.ErrorDetail(
            kind=bridge_pb2.ErrorDetail.Kind.Value(failure.kind),
            type=failure.type_name,
            message=failure.message,
            traceback=failure.traceback,
        )

    def lookup(self, name: str) -> Command:
        cmd = self.commands.get(name)
        if cmd is None:
            raise Failure(
                "UNKNOWN_COMMAND",
                "UnknownCommand",
                f"unknown command {name!r}; the commands there are: {', '.join(sorted(self.commands))}",
            )
        return cmd

    def bind_args(
        self, cmd: Command, payload: bridge_pb2.Payload, blobs: list[bytes] | None = None
    ) -> dict[str, Any]:
        """The command's arguments; ``blobs``: those of a big request, read out of its wire bytes."""
        if blobs is None:
            blobs = list(payload.blobs) if payload.blobs else []
        size = len(payload.json) + sum(len(blob) for blob in blobs) if blobs else len(payload.json)
        if size > self.max_message_bytes:
            raise Failure(
                "INVALID_ARGUMENTS",
                "PayloadTooLarge",
                f"arguments of command {cmd.name!r} are {size} bytes, over the limit of "
                f"{self.max_message_bytes} bytes",
            )
        try:
            args = wire.decode(payload.json, blobs)
        except wire.WireError as exc:
            raise Failure("INVALID_ARGUMENTS", "InvalidArguments", f"command {cmd.name!r}: {exc}") from None
        return cmd.bind(args)

    def encoded(self, value: Any, what: str) -> tuple[bytes, list[bytes], int]:
        """``value``'s JSON, blobs and size, refused when it cannot be sent or is too large."""
        try:
            data, blobs = wire.encode(value)
        except wire.WireError as exc:
            raise Failure("COMMAND_ERROR", "WireError", f"{what} cannot be sent: {exc}") from None
        size = len(data) + sum(len(blob) for blob in blobs) if blobs else len(data)
        if size > self.max_message_bytes:
            raise Failure(
                "COMMAND_ERROR",
                "PayloadTooLarge",
                f"{what} is {size} bytes, over the limit of {self.max_message_bytes} bytes",
            )
        return data, blobs, size

    def encode(
        self, value: Any, what: str, *, into: bridge_pb2.Payload | None = None
    ) -> tuple[bridge_pb2.Payload, int]:
        data, blobs, size = self.encoded(value, what)
        if into is None:
            return bridge_pb2.Payload(json=data, blobs=blobs), size
        # Filled in place: a Payload built first would be copied whole into its parent message.
        into.json = data
        into.blobs.extend(blobs)
        return into, size

    def call_context(
        self,
        request: bridge_pb2.ExecuteRequest | bridge_pb2.ExecuteBatchRequest,
        context: grpc.ServicerContext,
    ) -> CallContext:
        sid = request.session_id
        state = self.sessions.state_for(sid) if sid else self.sessions.global_state
        if request.timeout > 0:
            deadline: float | None = time.monotonic() + request.timeout
        else:
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
        return CallContext(sid or None, state, request.request_id or None, deadline)

    def invoke(
        self,
        cmd: Command,
        kwargs: dict[str, Any],
        ctx: CallContext,
        context: grpc.ServicerContext,
        call: CallHold,
    ) -> Any:
        """Run a unary command (sync, or async on the loop) and return its result."""
        token = set_context(ctx)
        try:
            if cmd.is_async:
                traced = tracing.capture()  # the loop's task runs under the call's span

                async def run() -> Any:
                    # A task cancelled before its first step never gets here: no
                    # handler code ran, so there is nothing to count.
                    call.hold()
                    tracing.activate(traced)
                    try:
                        return await cmd.method(**kwargs)
                    finally:
                        call.release()

                future = self.loop.submit(run())

                def cancel() -> None:
                    ctx.cancelled.set()
                    future.cancel()

                on_end(context, cancel)
                return future.result()
            on_end(context, ctx.cancelled.set)
            return cmd.method(**kwargs)
        except concurrent.futures.CancelledError:
            raise Failure("CANCELLED", "CancelledError", f"command {cmd.name!r} was cancelled") from None
        except Exception as exc:
            raise failure_from(exc, cmd.name) from None
        finally:
            reset_context(token)
            self._check_deadline(cmd, ctx)

    @staticmethod
    def _check_deadline(cmd: Command, ctx: CallContext) -> None:
        if ctx.deadline is not None and time.monotonic() > ctx.deadline:
            raise Failure("TIMEOUT", "TimeoutError", f"command {cmd.name!r} ran past its deadline")
        if ctx.cancelled.is_set():
            raise Failure("CANCELLED", "CancelledError", f"command {cmd.name!r} was cancelled")

    def unary_command(self, name: str) -> Command:
        """The command ``name`` for a unary call (Execute, ExecuteBatch)."""
        cmd = self.lookup(name)
        if cmd.stream:
            raise Failure(
                "INVALID_ARGUMENTS",
                "InvalidArguments",
                f"command {cmd.name!r} is a stream command; call it with ExecuteStream",
            )
        return cmd


def on_end(context: grpc.ServicerContext, callback: Callable[[], None]) -> None:
    """Run ``callback`` when the call ends (a cancel), or now if it has ended already.

    gRPC refuses a callback on a call that is already over (the caller
    cancelled before the command started), and the command must still stop.
    """
    if not context.add_callback(callback):
        callback()

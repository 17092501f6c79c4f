"""The Bridge gRPC service: decode, bind, call the handler, encode, answer.

Every failure becomes a non-OK status whose code fits its kind, with a
serialized ErrorDetail in the trailing metadata ``snakepit-error-bin``. Bad
input is answered, never raised out of the service: the bridge keeps serving.

Describe reports how many calls still run handler code (``active_calls``): a
cancelled call is over for gRPC at once, but its command may go on (a sync
command between two looks at ``context.cancelled``, a generator in a long
step), and the pool must not hand the bridge to the next caller, or must kill
it, while that is so. The steps of one call (bind, run, encode) are
:class:`~snakepit_bridge.calls.CallRunner`'s, shared with the batch runner.
"""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from snakepit_bridge import tracing, wire
from snakepit_bridge._proto import bridge_pb2, bridge_pb2_grpc
from snakepit_bridge.aio import LoopThread
from snakepit_bridge.batch import run_batch
from snakepit_bridge.calls import ActiveCalls, CallHold, CallRunner, on_end
from snakepit_bridge.commands import Failure
from snakepit_bridge.handler import Handler
from snakepit_bridge.rawexec import RAW_BYTES, BigRequest, execute_response
from snakepit_bridge.streams import StreamRun

__all__ = ["ERROR_METADATA_KEY", "PROTOCOL_VERSION", "ActiveCalls", "BridgeService", "CallHold"]

#: Trailing metadata key of the serialized ErrorDetail.
ERROR_METADATA_KEY = "snakepit-error-bin"
#: The Bridge protocol version this server implements.
PROTOCOL_VERSION = "1"
#: Largest stream message (many chunks); a bigger lone chunk goes alone.
BATCH_BYTES = 1024 * 1024

_STATUS = {
    "COMMAND_ERROR": grpc.StatusCode.UNKNOWN,
    "UNKNOWN_COMMAND": grpc.StatusCode.NOT_FOUND,
    "INVALID_ARGUMENTS": grpc.StatusCode.INVALID_ARGUMENT,
    "TIMEOUT": grpc.StatusCode.DEADLINE_EXCEEDED,
    "CANCELLED": grpc.StatusCode.CANCELLED,
    "SESSION_ERROR": grpc.StatusCode.FAILED_PRECONDITION,
}
#: Failures that are the bridge's limits, not the command's doing.
_TYPE_STATUS = {"PayloadTooLarge": grpc.StatusCode.RESOURCE_EXHAUSTED, "WireError": grpc.StatusCode.INTERNAL}


class BridgeService(CallRunner, bridge_pb2_grpc.BridgeServicer):
    """Serves one handler's commands."""

    def __init__(self, handler: Handler, *, max_message_bytes: int, loop: LoopThread) -> None:
        super().__init__(handler, max_message_bytes=max_message_bytes, loop=loop)
        self._streams: set[StreamRun] = set()
        self._streams_lock = threading.Lock()
        self._handler_name = f"{type(handler).__module__}:{type(handler).__qualname__}"

    # -- helpers --------------------------------------------------------------

    def _abort(
        self, context: grpc.ServicerContext, failure: Failure, traced: Any = None, *, chunks: int = 0
    ) -> None:
        if traced:
            if chunks:
                traced[0].set_attribute("snakepit.chunks", chunks)
            tracing.fail_span(
                traced[0], failure.kind.lower(), failure.type_name, failure.message, failure.traceback
            )
        detail = self.detail(failure)
        context.set_trailing_metadata(((ERROR_METADATA_KEY, detail.SerializeToString()),))
        code = _TYPE_STATUS.get(failure.type_name) or _STATUS[failure.kind]
        text = (
            failure.message if failure.kind != "COMMAND_ERROR" else f"{failure.type_name}: {failure.message}"
        )
        context.abort(code, text)

    # -- the RPCs -------------------------------------------------------------

    def Execute(  # type: ignore[override]  # a big result goes as its wire bytes
        self, request: bridge_pb2.ExecuteRequest | BigRequest, context: grpc.ServicerContext
    ) -> bridge_pb2.ExecuteResponse | bytes:
        """A unary call; a big request (or result) on wire bytes, see :mod:`snakepit_bridge.rawexec`."""
        blobs = None
        if isinstance(request, BigRequest):
            request, blobs = request.take()  # grpcio holds the request until the reply is sent
        self.stats.requests += 1
        call = self.active.open()
        traced = tracing.start_span("Execute", request.command, request.session_id, context)
        token = tracing.activate(traced and traced[1])
        try:
            cmd = self.unary_command(request.command)
            kwargs = self.bind_args(cmd, request.args, blobs)
            blobs = None
            result = self.invoke(cmd, kwargs, self.call_context(request, context), context, call)
            kwargs = {}  # big arguments go before the result is copied into the reply
            data, out, _ = self.encoded(result, f"the result of command {cmd.name!r}")
            result = None  # its blobs live in ``out`` alone until the reply holds them
            if traced:
                tracing.end_span(traced[0])
            if sum(len(blob) for blob in out) >= RAW_BYTES:
                return execute_response(data, out)
            response = bridge_pb2.ExecuteResponse()  # filled in place: a Payload would be copied in
            response.result.json = data
            response.result.blobs.extend(out)
            return response
        except Failure as failure:
            self._abort(context, failure, traced)
            raise  # unreachable: abort raises
        finally:
            tracing.deactivate(token)
            call.release()

    def ExecuteBatch(
        self, request: bridge_pb2.ExecuteBatchRequest, context: grpc.ServicerContext
    ) -> bridge_pb2.ExecuteBatchResponse:
        call = self.active.open()  # the whole batch is one running call
        traced = tracing.start_span("ExecuteBatch", request.command, request.session_id, context)
        token = tracing.activate(traced and traced[1])
        try:
            reply = run_batch(self, request, context, call)
            if traced:
                failed = sum(1 for item in reply.results if not item.ok)
                attrs = {"snakepit.batch.items": len(reply.results), "snakepit.batch.failed": failed}
                tracing.end_span(traced[0], "error" if failed else "ok", **attrs)
            return reply
        except Failure as failure:
            self._abort(context, failure, traced)
            raise  # unreachable: abort raises
        finally:
            tracing.deactivate(token)
            call.release()

    def ExecuteStream(
        self, request: bridge_pb2.ExecuteRequest, context: grpc.ServicerContext
    ) -> Iterator[bridge_pb2.ExecuteStreamResponse]:
        self.stats.requests += 1
        call = self.active.open()
        traced = tracing.start_span("ExecuteStream", request.command, request.session_id, context)
        token = tracing.activate(traced and traced[1])
        try:
            try:
                cmd = self.lookup(request.command)
                kwargs = self.bind_args(cmd, request.args)
                ctx = self.call_context(request, context)
                if not cmd.stream:
                    # A unary command streamed: its result is the one chunk.
                    payload, _ = self.encode(
                        self.invoke(cmd, kwargs, ctx, context, call), f"the result of {cmd.name!r}"
                    )
                    if traced:
                        tracing.end_span(traced[0], "ok", **{"snakepit.chunks": 1})
                    return iter([bridge_pb2.ExecuteStreamResponse(chunks=[payload])])
            except Failure as failure:
                self._abort(context, failure, traced)
                raise
            run = StreamRun(
                cmd,
                kwargs,
                ctx,
                lambda value: self.encode(value, f"a chunk of command {cmd.name!r}"),
                self.loop,
                batch_bytes=min(BATCH_BYTES, self.max_message_bytes),
                on_closed=lambda: self._stream_closed(run, call),
            )
            with self._streams_lock:
                self._streams.add(run)
            self.stats.streams_started += 1
            call.hold()  # the producer's: it may outlive this call after a cancel
            on_end(context, run.cancel)
            try:
                run.start()
            except BaseException:
                self._stream_closed(run, call)
                if traced:
                    tracing.end_span(traced[0], "error")
                raise
            return self._pump(run, context, traced[0] if traced else None)
        finally:
            tracing.deactivate(token)
            call.release()

    def _stream_closed(self, run: StreamRun, call: CallHold) -> None:
        with self._streams_lock:
            self._streams.discard(run)
        self.stats.streams_closed += 1
        call.release()

    def _pump(
        self, run: StreamRun, context: grpc.ServicerContext, span: Any = None
    ) -> Iterator[bridge_pb2.ExecuteStreamResponse]:
        response = bridge_pb2.ExecuteStreamResponse
        sent = 0
        finished = False
        try:
            for batch in run.batches():
                if span is not None:
                    sent = tracing.add_chunks(span, sent, len(batch))
                yield response(chunks=batch)
            finished = True
        except Failure as failure:
            self._abort(context, failure, (span, None) if span is not None else None, chunks=sent)
        finally:
            if span is not None and span.is_recording():  # not ended by a failure
                outcome = "ok" if finished and not run.ctx.cancelled.is_set() else "cancelled"
                tracing.end_span(span, outcome, **{"snakepit.chunks": sent})

    def InitSession(
        self, request: bridge_pb2.InitSessionRequest, context: grpc.ServicerContext
    ) -> bridge_pb2.InitSessionResponse:
        try:
            if not request.session_id:
                raise Failure("SESSION_ERROR", "InvalidSessionId", "InitSession needs a session_id")
            try:
                data = wire.decode(request.data.json, list(request.data.blobs)) if request.data.json else None
            except wire.WireError as exc:
                raise Failure("INVALID_ARGUMENTS", "InvalidArguments", f"session data: {exc}") from None
            self.sessions.start(request.session_id, data)
        except Failure as failure:
            self._abort(context, failure)
        return bridge_pb2.InitSessionResponse()

    def EndSession(
        self, request: bridge_pb2.EndSessionRequest, context: grpc.ServicerContext
    ) -> bridge_pb2.EndSessionResponse:
        try:
            existed = self.sessions.end(request.session_id)
        except Failure as failure:
            self._abort(context, failure)
            raise
        return bridge_pb2.EndSessionResponse(existed=existed)

    def Describe(
        self, request: bridge_pb2.DescribeRequest, context: grpc.ServicerContext
    ) -> bridge_pb2.DescribeResponse:
        return bridge_pb2.DescribeResponse(
            language="python",
            runtime_version=platform.python_version(),
            pid=os.getpid(),
            handler=self._handler_name,
            commands=[
                bridge_pb2.CommandInfo(name=cmd.name, stream=cmd.stream, doc=cmd.doc)
                for cmd in sorted(self.commands.values(), key=lambda cmd: cmd.name)
            ],
            protocol_version=PROTOCOL_VERSION,
            active_calls=self.active.count,
        )

    # -- shutdown -------------------------------------------------------------

    def cancel_streams(self) -> None:
        """Cancel every running stream (the bridge is stopping)."""
        with self._streams_lock:
            runs = list(self._streams)
        stopping = Failure("CANCELLED", "BridgeStopping", "the bridge is stopping; the stream was cut short")
        for run in runs:
            run.cancel(stopping)

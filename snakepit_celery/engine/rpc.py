"""The client side of the Bridge protocol: channel options, requests, error mapping.

One channel option set serves every bridge: a private Unix socket needs no
proxy lookup, no retries (the pool decides what to retry) and its own
subchannel (so one bridge's reconnect backoff never touches another's); the
message limits follow ``max_payload_bytes`` so both sides refuse the same
sizes. A remote failure arrives as a non-OK status with a serialized
``ErrorDetail`` in the trailing metadata ``snakepit-error-bin``; it maps
one-to-one onto the classes of :mod:`snakepit_celery.errors`.

Whether a failed call can have reached the bridge at all is told by
:func:`never_sent`; only that answer allows the pool to run a call that is
not idempotent a second time.
"""

from __future__ import annotations

from typing import Any

import grpc
from snakepit_bridge import wire
from snakepit_bridge._proto import bridge_pb2
from snakepit_bridge.protowire import fields, payload_of, wrapped_payload

from snakepit_celery.errors import (
    CommandCancelled,
    CommandError,
    CommandTimeout,
    ExecutionError,
    InvalidArguments,
    PayloadTooLarge,
    SessionError,
    UnknownCommand,
)

__all__ = [
    "ERROR_METADATA_KEY",
    "channel_options",
    "decode_execute_reply",
    "decode_payload",
    "encode_payload",
    "error_from_detail",
    "execute_request",
    "map_rpc_error",
    "never_sent",
]

#: Trailing metadata key of the serialized ErrorDetail.
ERROR_METADATA_KEY = "snakepit-error-bin"

_Kind = bridge_pb2.ErrorDetail.Kind
#: The status message of a call that failed to get a connection (gRPC core's
#: pick_first policy, grpcio 1.5x-1.8x: "...; last error: <why>").
_NO_CONNECTION = "failed to connect to all addresses"

_BASE_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.enable_retries", 0),
    ("grpc.enable_http_proxy", 0),
    ("grpc.use_local_subchannel_pool", 1),
    # A bridge's socket appears within milliseconds of its start: reconnect fast.
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.min_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 100),
)


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """The options of every channel to a bridge whose messages may be this large."""
    return [
        *_BASE_OPTIONS,
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def encode_payload(value: Any, *, limit: int, what: str = "arguments") -> bridge_pb2.Payload:
    """``value`` as a Payload, refusing what JSON cannot carry or what is too large.

    Raises:
        InvalidArguments: the value is not JSON-able (names the type).
        PayloadTooLarge: the encoded size is over ``limit`` (names both).
    """
    data, blobs = _encoded(value, limit, what)
    return bridge_pb2.Payload(json=data, blobs=blobs)


def _encoded(value: Any, limit: int, what: str) -> tuple[bytes, list[bytes]]:
    """``value``'s JSON and blobs, checked against ``limit`` (see :func:`encode_payload`)."""
    try:
        data, blobs = wire.encode(value)
    except wire.WireError as exc:
        raise InvalidArguments(f"{what}: {exc}") from None
    size = len(data) + sum(len(b) for b in blobs)
    if size > limit:
        raise PayloadTooLarge(f"{what} are {size} bytes, over the limit of {limit} bytes (max_payload_bytes)")
    return data, blobs


#: Blobs at least this large in all are written into, and read out of, the Execute
#: messages by hand: protobuf's Python messages copy every bytes field on the way in
#: and again on the way out, three copies of a 50 MiB image where one will do.
RAW_BYTES = 256 * 1024
_ARGS_TAG = b"\x12"  # ExecuteRequest.args: field 2, length-delimited


def execute_request(
    command: str, args: Any, *, limit: int, session_id: str, timeout: float, request_id: str
) -> bytes:
    """The wire bytes of an ``ExecuteRequest`` (for the raw Execute stub); big blobs copied once.

    Raises:
        InvalidArguments, PayloadTooLarge: as :func:`encode_payload`.
    """
    data, blobs = _encoded(args, limit, "arguments")
    if sum(len(b) for b in blobs) < RAW_BYTES:
        payload = bridge_pb2.Payload(json=data, blobs=blobs)
        return bridge_pb2.ExecuteRequest(
            command=command, args=payload, session_id=session_id, timeout=timeout, request_id=request_id
        ).SerializeToString()
    head = bridge_pb2.ExecuteRequest(
        command=command, session_id=session_id, timeout=timeout, request_id=request_id
    ).SerializeToString()
    return b"".join([head, *wrapped_payload(_ARGS_TAG, data, blobs)])  # field order is free in protobuf


def decode_execute_reply(raw: bytes) -> Any:
    """The result in the wire bytes of an ``ExecuteResponse``; a big one read out with one copy.

    Raises:
        CommandError: the bridge sent a result that cannot be decoded.
    """
    if len(raw) < RAW_BYTES:
        try:
            reply = bridge_pb2.ExecuteResponse.FromString(raw)
        except Exception as exc:
            raise CommandError(f"the bridge sent a reply that cannot be parsed: {exc}", "WireError") from None
        return decode_payload(reply.result)
    data: bytes = b""
    blobs: list[bytes] = []
    try:
        found = fields(memoryview(raw))
        results = [value for number, _, _, value in found if number == 1 and value is not None]
        if results:
            data, blobs = payload_of(results[-1])
    except (ValueError, IndexError) as exc:
        raise CommandError(f"the bridge sent a reply that cannot be parsed: {exc}", "WireError") from None
    try:
        return wire.decode(data, blobs or None)
    except wire.WireError as exc:
        raise CommandError(f"the bridge sent a result that cannot be decoded: {exc}", "WireError") from None


def decode_payload(payload: bridge_pb2.Payload, *, what: str = "result") -> Any:
    """The value of a Payload a bridge sent; a broken one is a CommandError."""
    try:
        return wire.decode(payload.json, list(payload.blobs) if payload.blobs else None)
    except wire.WireError as exc:
        raise CommandError(f"the bridge sent a {what} that cannot be decoded: {exc}", "WireError") from None


def _detail(exc: grpc.RpcError) -> bridge_pb2.ErrorDetail | None:
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == ERROR_METADATA_KEY:
            try:
                return bridge_pb2.ErrorDetail.FromString(value)
            except Exception:  # a garbled detail is reported as a plain command error
                return bridge_pb2.ErrorDetail(message=f"undecodable error detail ({len(value)} bytes)")
    return None


def map_rpc_error(exc: grpc.RpcError, *, command: str, limit: int) -> ExecutionError | SessionError | None:
    """The library error for a failed call, or None when the bridge itself failed.

    None means no ErrorDetail and no status a healthy bridge sends: the caller
    treats it as a crash (or a hard timeout on DEADLINE_EXCEEDED).
    """
    detail = _detail(exc)
    if detail is None:
        code = exc.code() if hasattr(exc, "code") else None
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return PayloadTooLarge(
                f"{command!r}: a message was over the limit of {limit} bytes (max_payload_bytes): "
                f"{exc.details() if hasattr(exc, 'details') else exc}"
            )
        return None
    return error_from_detail(detail)


def error_from_detail(detail: bridge_pb2.ErrorDetail) -> ExecutionError | SessionError:
    """The library error for an ``ErrorDetail`` (a failed call's, or a batch item's)."""
    kind = detail.kind
    message = detail.message
    if detail.type == "PayloadTooLarge":  # arguments, result or chunk over the bridge's limit
        return PayloadTooLarge(message)
    if kind == _Kind.UNKNOWN_COMMAND:
        return UnknownCommand(message)
    if kind == _Kind.INVALID_ARGUMENTS:
        return InvalidArguments(message)
    if kind == _Kind.TIMEOUT:
        return CommandTimeout(message)
    if kind == _Kind.CANCELLED:
        return CommandCancelled(message)
    if kind == _Kind.SESSION_ERROR:
        return SessionError(message)
    return CommandError(message, detail.type, detail.traceback)


def never_sent(exc: grpc.RpcError) -> bool:
    """True when the call failed before any of it was sent: the channel had no connection.

    With retries off and ``wait_for_ready`` unset, a call is only written to
    a transport that is connected; when there is none (the bridge's socket
    refuses connections because its process is gone, or the old connection
    was seen to reset), gRPC fails it with UNAVAILABLE and the policy's
    "failed to connect" message, and nothing of it ever left this process.
    Every other failure may come after the request was written, so the
    bridge may have started the command. "Connection reset" in particular
    proves nothing: a Unix socket resets when its owner dies with any unread
    data, which may be a flow-control frame sent after the request was read.
    """
    if not hasattr(exc, "code") or exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = exc.details() if hasattr(exc, "details") else None
    return isinstance(details, str) and details.startswith(_NO_CONNECTION)

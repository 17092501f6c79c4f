"""Execute with big bytes on wire bytes: each blob copied once on the way in and once on the way out.

Python protobuf copies a bytes field into its message and again out of it,
and grpcio keeps the request it handed to the servicer until the reply has
been sent: a 50 MiB argument echoed back was held five times at once. For a
message at least :data:`RAW_BYTES` long, the Execute handler here reads the
blobs straight out of the request's wire bytes (the other fields through
protobuf, from their own few bytes), the servicer takes them out of the
request it was given (:meth:`BigRequest.take`), and a result with big blobs
is written as the wire bytes of its ``ExecuteResponse`` by hand. Smaller
messages go through protobuf as before. The bytes on the wire are the same
either way: protobuf's encoding, which the caller decodes as it always has.
"""

from __future__ import annotations

from typing import Any

import grpc

from snakepit_bridge._proto import bridge_pb2, bridge_pb2_grpc
from snakepit_bridge.protowire import fields, payload_of, wrapped_payload

__all__ = ["RAW_BYTES", "BigRequest", "add_servicer", "execute_response", "parse_execute_request"]

#: Messages at least this long are read, and results with blobs at least this large in all written, by hand.
RAW_BYTES = 256 * 1024
_ARGS = 2  # ExecuteRequest.args
_RESULT_TAG = b"\x0a"  # ExecuteResponse.result: field 1, length-delimited


class BigRequest:
    """An ``ExecuteRequest`` whose blobs were read out of its wire bytes, held beside it."""

    __slots__ = ("blobs", "head")

    def __init__(self, head: bridge_pb2.ExecuteRequest, blobs: list[bytes]) -> None:
        #: Every field but the arguments' blobs (``args.json`` included).
        self.head = head
        self.blobs: list[bytes] | None = blobs

    def take(self) -> tuple[bridge_pb2.ExecuteRequest, list[bytes]]:
        """The request and its blobs, which this object then no longer holds (grpcio keeps it
        until the reply is sent; the blobs go as soon as the command is done with them)."""
        blobs, self.blobs = self.blobs, None
        if blobs is None:
            raise RuntimeError("the blobs of this request were taken already")
        return self.head, blobs


def parse_execute_request(raw: bytes) -> bridge_pb2.ExecuteRequest | BigRequest:
    """The request deserializer of Execute: a big message's blobs read out with one copy each.

    Raises:
        ValueError, DecodeError: not an ``ExecuteRequest`` (grpcio answers INTERNAL).
    """
    if len(raw) < RAW_BYTES:
        return bridge_pb2.ExecuteRequest.FromString(raw)
    view = memoryview(raw)
    others, data, blobs = [], b"", []
    for number, start, end, value in fields(view):
        if number != _ARGS or value is None:
            others.append(view[start:end])
            continue
        json_part, more = payload_of(value)  # a repeated message field merges, as protobuf does
        data = json_part or data
        blobs += more
    head = bridge_pb2.ExecuteRequest.FromString(b"".join(others))
    head.args.json = data
    return BigRequest(head, blobs)


def execute_response(data: bytes, blobs: list[bytes]) -> bytes:
    """The wire bytes of ``ExecuteResponse(result=Payload(json=data, blobs=blobs))``, blobs copied once."""
    return b"".join(wrapped_payload(_RESULT_TAG, data, blobs))


def _serialize_response(response: bridge_pb2.ExecuteResponse | bytes) -> bytes:
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()


class _Recorder:
    """Stands in for the server to collect the generated code's method handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers = dict(handlers)


def add_servicer(servicer: bridge_pb2_grpc.BridgeServicer, server: grpc.Server) -> None:
    """``add_BridgeServicer_to_server``, with Execute on :func:`parse_execute_request` and wire bytes."""
    recorder = _Recorder()
    bridge_pb2_grpc.add_BridgeServicer_to_server(servicer, recorder)
    handlers = recorder.handlers
    handlers["Execute"] = grpc.unary_unary_rpc_method_handler(
        servicer.Execute,
        request_deserializer=parse_execute_request,
        response_serializer=_serialize_response,
    )
    name = bridge_pb2.DESCRIPTOR.services_by_name["Bridge"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)

"""The Python bridge's Execute on wire bytes (``snakepit_bridge.rawexec``): what protobuf reads and writes."""

from __future__ import annotations

import os

import pytest
from google.protobuf.message import DecodeError
from snakepit_bridge._proto import bridge_pb2
from snakepit_bridge.rawexec import RAW_BYTES, BigRequest, execute_response, parse_execute_request


def test_a_big_request_parses_as_protobuf_parses_it() -> None:
    blobs = [os.urandom(RAW_BYTES), b"", b"x"]
    first = bridge_pb2.ExecuteRequest(
        command="echo",
        args=bridge_pb2.Payload(json=b'{"a":1}', blobs=blobs),
        session_id="s-1",
        timeout=2.5,
        request_id="r-1",
    )
    # A message field written twice merges: the later json, the blobs of both.
    second = bridge_pb2.ExecuteRequest(args=bridge_pb2.Payload(json=b'{"b":2}', blobs=[b"more"]))
    raw = first.SerializeToString() + second.SerializeToString()
    expected = bridge_pb2.ExecuteRequest.FromString(raw)
    parsed = parse_execute_request(raw)
    assert isinstance(parsed, BigRequest)
    head, got = parsed.take()
    assert got == [*blobs, b"more"] == list(expected.args.blobs)
    assert all(type(blob) is bytes for blob in got)
    assert not head.args.blobs
    head.args.blobs.extend(got)
    assert head == expected
    assert parsed.blobs is None  # what grpcio keeps until the reply is sent holds no blob
    with pytest.raises(RuntimeError, match="taken already"):
        parsed.take()


def test_a_small_request_is_protobuf_s_own() -> None:
    request = bridge_pb2.ExecuteRequest(command="ping", args=bridge_pb2.Payload(json=b"{}", blobs=[b"b"]))
    assert parse_execute_request(request.SerializeToString()) == request


def test_a_big_result_written_by_hand_reads_as_protobuf_s() -> None:
    data, blobs = b'{"r":{"__snakepit_bytes__":0}}', [os.urandom(RAW_BYTES), b"", b"y"]
    expected = bridge_pb2.ExecuteResponse(result=bridge_pb2.Payload(json=data, blobs=blobs))
    raw = execute_response(data, blobs)
    assert bridge_pb2.ExecuteResponse.FromString(raw) == expected
    assert raw == expected.SerializeToString()


def test_a_big_message_that_is_not_a_request_is_refused() -> None:
    with pytest.raises((ValueError, DecodeError)):
        parse_execute_request(b"\x12\xff\xff\xff\x7f" + bytes(RAW_BYTES))  # args longer than the message

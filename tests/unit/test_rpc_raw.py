"""The Execute messages written and read by hand for big blobs (``snakepit_celery.engine.rpc``)."""

from __future__ import annotations

import os

import pytest
from snakepit_bridge import wire
from snakepit_bridge._proto import bridge_pb2

from snakepit_celery.engine.rpc import RAW_BYTES, decode_execute_reply, execute_request
from snakepit_celery.errors import CommandError


@pytest.mark.parametrize("size", [10, RAW_BYTES, 3 * RAW_BYTES + 7], ids=["small", "at-threshold", "big"])
def test_a_request_written_by_hand_parses_as_protobuf_writes_it(size: int) -> None:
    value = {"image": os.urandom(size), "more": [b"x", os.urandom(200)], "n": 3}
    raw = execute_request("echo", value, limit=1 << 30, session_id="s1", timeout=2.5, request_id="r1")
    parsed = bridge_pb2.ExecuteRequest.FromString(raw)
    assert (parsed.command, parsed.session_id, parsed.timeout, parsed.request_id) == ("echo", "s1", 2.5, "r1")
    assert wire.decode(parsed.args.json, list(parsed.args.blobs)) == value


@pytest.mark.parametrize("size", [10, 3 * RAW_BYTES + 7], ids=["small", "big"])
def test_a_reply_read_by_hand_gives_what_protobuf_reads(size: int) -> None:
    value = {"data": os.urandom(size), "list": [b"", b"\x00\xff"], "text": "héllo"}
    data, blobs = wire.encode(value)
    raw = bridge_pb2.ExecuteResponse(result=bridge_pb2.Payload(json=data, blobs=blobs)).SerializeToString()
    assert decode_execute_reply(raw) == value
    # Fields it does not know (a newer bridge) are skipped, whatever their wire type.
    extra = b"\x18\x96\x01" + b"\x21" + b"\0" * 8 + b"\x2d" + b"\0" * 4 + b"\x32\x03abc"
    assert decode_execute_reply(raw + extra) == value


def test_a_broken_reply_is_a_command_error_not_a_crash() -> None:
    value = {"data": os.urandom(RAW_BYTES)}
    data, blobs = wire.encode(value)
    raw = bridge_pb2.ExecuteResponse(result=bridge_pb2.Payload(json=data, blobs=blobs)).SerializeToString()
    with pytest.raises(CommandError, match="cannot be parsed"):
        decode_execute_reply(raw[:-10])

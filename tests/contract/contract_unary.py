"""The contract's unary tests: health, Describe, the showcase commands, values, errors."""

from __future__ import annotations

import json
import math
import os
import struct
import threading
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from snakepit_bridge._proto import bridge_pb2

from .common import (
    SHOWCASE_STREAMS,
    SHOWCASE_UNARY,
    BridgeProcess,
    Client,
    ContractHooks,
    Kind,
    dumps,
    json_payload,
    unpayload,
)

ARRAY = "__snakepit_array__"


class UnaryContract(ContractHooks):
    # -- health and Describe --------------------------------------------------

    def test_health_serving(self, client: Client) -> None:
        for service in ("", "snakepit.bridge.v1.Bridge"):
            reply = client.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service

    def test_describe(self, client: Client, shared: tuple[BridgeProcess, Client]) -> None:
        reply = client.stub.Describe(bridge_pb2.DescribeRequest(), timeout=5)
        assert reply.language == self.language
        assert reply.protocol_version == "1"
        assert reply.runtime_version
        assert reply.pid == shared[0].pid
        assert reply.handler
        commands = {info.name: info for info in reply.commands}
        for name in SHOWCASE_UNARY:
            assert name in commands and not commands[name].stream, name
        for name in SHOWCASE_STREAMS:
            assert name in commands and commands[name].stream, name
        assert all(info.doc for info in reply.commands if info.name in SHOWCASE_UNARY + SHOWCASE_STREAMS)

    # -- unary showcase commands ----------------------------------------------

    def test_ping(self, client: Client) -> None:
        assert client.execute("ping")["status"] == "ok"

    def test_echo(self, client: Client) -> None:
        assert client.execute("echo", {"message": "hello"}) == {"echoed": {"message": "hello"}}

    @pytest.mark.parametrize(
        ("operation", "a", "b", "expected"),
        [
            ("add", 5, 3, 8),
            ("subtract", 5, 8, -3),
            ("multiply", 10, 5, 50),
            ("divide", 6, 3, 2),
            ("divide", 7, 2, 3.5),
            ("power", 2, 10, 1024),
            ("add", 0.5, 0.25, 0.75),
        ],
    )
    def test_compute(self, client: Client, operation: str, a: Any, b: Any, expected: Any) -> None:
        result = client.execute("compute", {"operation": operation, "a": a, "b": b})["result"]
        assert result == expected
        assert type(result) is type(expected), f"{operation}({a}, {b}) gave {result!r}"

    def test_compute_sqrt(self, client: Client) -> None:
        assert client.execute("compute", {"operation": "sqrt", "a": 16})["result"] == 4
        assert math.isclose(client.execute("compute", {"operation": "sqrt", "a": 2})["result"], math.sqrt(2))

    def test_divide_by_zero_is_a_command_error(self, client: Client) -> None:
        code, detail = client.fail("compute", {"operation": "divide", "a": 1, "b": 0})
        assert code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
        assert detail.kind == Kind.COMMAND_ERROR
        assert detail.type == self.zero_division_type
        assert detail.message
        assert detail.traceback
        assert client.execute("ping")["status"] == "ok"

    def test_info(self, client: Client, shared: tuple[BridgeProcess, Client]) -> None:
        before = client.execute("info")
        client.execute("ping")
        info = client.execute("info")
        assert info["pid"] == shared[0].pid
        assert info["language"] == self.language
        assert info["runtime_version"]
        assert info["uptime"] >= 0
        assert info["requests_handled"] >= before["requests_handled"] + 2
        for key in (
            "streams_closed",
            "streams_cancelled",
            "sessions_active",
            "sessions_started",
            "sessions_ended",
        ):
            assert isinstance(info[key], int), key

    def test_random(self, client: Client) -> None:
        uniform = client.execute("random", {"type": "uniform", "min": 10, "max": 20})["value"]
        assert 10 <= uniform <= 20
        integer = client.execute("random", {"type": "integer", "min": 1, "max": 6})["value"]
        assert isinstance(integer, int) and 1 <= integer <= 6
        normal = client.execute("random", {"type": "normal", "mean": 0, "std": 1})["value"]
        assert isinstance(normal, (int, float))

    def test_sleep(self, client: Client) -> None:
        started = time.monotonic()
        client.execute("sleep", {"seconds": 0.05})
        assert time.monotonic() - started >= 0.05

    def test_concurrent_calls(self, client: Client) -> None:
        results: list[Any] = []

        def work(n: int) -> None:
            results.append(client.execute("compute", {"operation": "add", "a": n, "b": 1})["result"])

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == list(range(1, 9))

    # -- values on the wire -----------------------------------------------------

    def test_type_round_trip(self, client: Client) -> None:
        value = {
            "int": 1,
            "negative": -7,
            "big": 2**53 - 1,
            "zero": 0,
            "float": 1.5,
            "tiny": 1.25e-7,
            "none": None,
            "true": True,
            "false": False,
            "nested": {"list": [1, [2, {"x": None}]], "empty": {}, "empty_list": []},
            "unicode": 'héllo ✓ 日本語 🐍 \u0000 \n"quoted"',
            "bytes": b"\x00\x01\xfe\xff",
            "empty_bytes": b"",
            "nested_bytes": [{"blob": b"abc"}, [b"def", {"deeper": b"\x80"}]],
            "marker_lookalike": {"__snakepit_bytes__": 0},
            "escape_lookalike": {"__snakepit_escape__": ["a", 1]},
        }
        echoed = client.execute("echo", value)["echoed"]
        assert echoed == value
        for key in ("int", "big", "zero", "float", "none", "true", "bytes"):
            assert type(echoed[key]) is type(value[key]), key

    def test_big_bytes_come_back_equal_and_the_call_fields_arrive(self, client: Client) -> None:
        # Over 256 KiB: the Python bridge reads these out of the wire bytes, and writes the
        # result's, by hand (snakepit_bridge.rawexec); the caller decodes them with protobuf.
        big, other = os.urandom(512 * 1024), os.urandom(300 * 1024)
        value = {"a": big, "b": [other, {"c": b"small"}], "n": 1, "s": "text"}
        assert client.execute("echo", value, request_id="r-big", timeout=5.0) == {"echoed": value}
        reply = client.execute("ping", {"pad": big}, session_id="big-session", request_id="r-big")
        assert (reply["status"], reply["session_id"]) == ("ok", "big-session")
        client.stub.EndSession(bridge_pb2.EndSessionRequest(session_id="big-session"), timeout=5)

    def test_arrays_travel_as_raw_buffers_with_dtype_and_shape(self, client: Client) -> None:
        # Written at the wire level: what any bridge receives from a numpy array.
        floats = struct.pack("<6f", 0, 1.5, 2, 3, 4, -5)
        longs = struct.pack("<2q", -(2**40), 7)
        doc = {
            "img": {ARRAY: {"dtype": "<f4", "shape": [2, 3], "blob": 0}},
            "ids": {ARRAY: {"dtype": "<i8", "shape": [2], "blob": 1}},
            "mask": {ARRAY: {"dtype": "|b1", "shape": [0], "blob": 2}},
            "lookalike": {"__snakepit_escape__": [ARRAY, 1]},
        }
        raw = bridge_pb2.Payload(json=dumps(doc), blobs=[floats, longs, b""])
        response = client.stub.Execute(bridge_pb2.ExecuteRequest(command="echo", args=raw), timeout=10)
        echoed = json.loads(response.result.json)["echoed"]
        blobs = list(response.result.blobs)
        for name, dtype, shape, data in (
            ("img", "<f4", [2, 3], floats),
            ("ids", "<i8", [2], longs),
            ("mask", "|b1", [0], b""),
        ):
            spec = echoed[name][ARRAY]
            assert (spec["dtype"], spec["shape"]) == (dtype, shape), name
            assert blobs[spec["blob"]] == data, name  # the bytes themselves, not a JSON list
        assert unpayload(response.result)["echoed"]["lookalike"] == {ARRAY: 1}

    @pytest.mark.parametrize(
        "spec",
        [
            {"dtype": ">f4", "shape": [1], "blob": 0},
            {"dtype": "<f4", "shape": [2], "blob": 0},
            {"dtype": "<f4", "shape": [1], "blob": 5},
            {"dtype": "<f4", "shape": [1]},
        ],
        ids=["big-endian", "wrong-size", "no-such-blob", "no-blob"],
    )
    def test_a_broken_array_marker_is_refused_by_name(self, client: Client, spec: dict[str, Any]) -> None:
        raw = bridge_pb2.Payload(json=dumps({"a": {ARRAY: spec}}), blobs=[b"\0\0\0\0"])
        code, detail = client.fail("echo", raw=raw)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert detail.kind == Kind.INVALID_ARGUMENTS
        assert "array" in detail.message
        assert client.execute("ping")["status"] == "ok"

    # -- errors -----------------------------------------------------------------

    def test_unknown_command_lists_commands(self, client: Client) -> None:
        code, detail = client.fail("no_such_command", {})
        assert code == grpc.StatusCode.NOT_FOUND
        assert detail.kind == Kind.UNKNOWN_COMMAND
        assert "no_such_command" in detail.message
        for name in ("ping", "compute", "ping_stream"):
            assert name in detail.message

    @pytest.mark.parametrize(
        "raw",
        [b"{not json", b"\xff\xfe", b"[1, 2]", b'"a string"', b"42"],
        ids=["broken", "not-utf8", "array", "string", "number"],
    )
    def test_bad_argument_payloads(self, client: Client, raw: bytes) -> None:
        code, detail = client.fail("compute", raw=json_payload(raw))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert detail.kind == Kind.INVALID_ARGUMENTS
        assert detail.message
        assert client.execute("ping")["status"] == "ok"

    def test_wrong_argument_names(self, client: Client) -> None:
        code, detail = client.fail("compute", {"operation": "add", "a": 1, "b": 2, "bogus": 3})
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert detail.kind == Kind.INVALID_ARGUMENTS
        assert "bogus" in detail.message
        code, detail = client.fail("set_counter", {})
        assert detail.kind == Kind.INVALID_ARGUMENTS
        assert "value" in detail.message
        assert client.execute("ping")["status"] == "ok"

    def test_bad_operation_is_invalid_arguments(self, client: Client) -> None:
        code, detail = client.fail("compute", {"operation": "modulo", "a": 1, "b": 2})
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "modulo" in detail.message

    def test_stream_command_refused_on_execute(self, client: Client) -> None:
        code, detail = client.fail("ping_stream", {})
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "ExecuteStream" in detail.message

    def test_unary_command_on_execute_stream(self, client: Client) -> None:
        assert client.messages("compute", {"operation": "add", "a": 1, "b": 2}) == [
            [{"result": 3, "operation": "add"}]
        ]

    def test_soft_deadline(self, client: Client) -> None:
        code, detail = client.fail("sleep", {"seconds": 0.3}, timeout=0.05)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert detail.kind == Kind.TIMEOUT

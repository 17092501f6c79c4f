"""The contract suite against the Python bridge, plus what only Python can promise."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import grpc
import pytest
from snakepit_bridge._proto import bridge_pb2

from .base import LONG_LIVED, BridgeContract, Launch
from .common import BridgeProcess, Client, Kind, payload


class TestPythonBridge(BridgeContract):
    language = "python"
    zero_division_type = "ZeroDivisionError"

    def bridge_command(self) -> list[str]:
        return [sys.executable, "-m", "snakepit_bridge"]

    def extra_args(self) -> list[str]:
        return ["--allow-module", "collections"]

    # -- Python specifics -------------------------------------------------------

    def test_describe_names_handler(self, client: Client) -> None:
        reply = client.stub.Describe(bridge_pb2.DescribeRequest(), timeout=5)
        assert reply.handler == "snakepit_bridge.showcase:ShowcaseHandler"
        assert reply.runtime_version == "{}.{}.{}".format(*sys.version_info[:3])

    def test_traceback_points_at_the_command(self, client: Client) -> None:
        _, detail = client.fail("compute", {"operation": "divide", "a": 1, "b": 0})
        assert detail.message == "division by zero"
        assert "in compute" in detail.traceback
        assert detail.traceback.rstrip().endswith("ZeroDivisionError: division by zero")
        assert "service.py" not in detail.traceback.splitlines()[1]

    def test_python_ints_beyond_53_bits(self, client: Client) -> None:
        assert client.execute("echo", {"n": 2**70})["echoed"]["n"] == 2**70
        assert client.execute("compute", {"operation": "power", "a": 3, "b": 50})["result"] == 3**50

    def test_session_data_reaches_the_hook(self, client: Client) -> None:
        data = {"counter": 3, "program": {"blob": b"\x01\x02"}}
        client.stub.InitSession(
            bridge_pb2.InitSessionRequest(session_id="py-data", data=payload(data)), timeout=5
        )
        info = client.execute("session_info", {}, session_id="py-data")
        assert info["session_id"] == "py-data"
        assert info["init_data"] == data
        client.stub.EndSession(bridge_pb2.EndSessionRequest(session_id="py-data"), timeout=5)

    def test_unencodable_result_names_the_type(self, client: Client) -> None:
        _code, detail = client.fail("python.call", {"target": "collections.deque", "args": [[1, 2]]})
        assert "deque" in detail.message

    def test_payload_limit_names_sizes(self, launch: Launch) -> None:
        _proc, client = launch(["--max-message-bytes", "100000", "--allow-module", "json"])
        code, detail = client.fail("echo", {"data": "x" * 150_000})
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert detail.type == "PayloadTooLarge"
        assert "100000" in detail.message
        # Small arguments, a result of ~150 kB.
        big = {"target": "json.dumps", "args": [[0] * 1500], "kwargs": {"indent": 100}}
        code, detail = client.fail("python.call", big)
        assert detail.type == "PayloadTooLarge" and detail.kind == Kind.COMMAND_ERROR


class TestPythonCallApi:
    """The generic call API (``python.call`` & co.) of the Python showcase handler."""

    @pytest.fixture(scope="class")
    @classmethod
    def shared(cls) -> Iterator[tuple[BridgeProcess, Client]]:
        contract = TestPythonBridge()
        proc, client = contract._launch(["--allow-module", "math", "--allow-module", "collections",
                                          "--allow-module", "json"])  # fmt: skip
        LONG_LIVED.add(proc.pid)
        try:
            yield proc, client
        finally:
            LONG_LIVED.discard(proc.pid)
            contract._finish(proc, client)

    @pytest.fixture
    def client(self, shared: tuple[BridgeProcess, Client]) -> Client:
        return shared[1]

    def test_call_function(self, client: Client) -> None:
        assert client.execute("python.call", {"target": "math.sqrt", "args": [16]}) == 4.0
        dumped = client.execute(
            "python.call", {"target": "json.dumps", "args": [[1]], "kwargs": {"indent": 1}}
        )
        assert dumped == "[\n 1\n]"

    def test_submodule_of_an_allowed_module(self, client: Client) -> None:
        result = client.execute("python.call", {"target": "json.decoder.JSONDecoder", "store_as": "dec"})
        assert result["stored_as"] == "dec" and result["type"] == "json.decoder.JSONDecoder"
        assert client.execute("python.call", {"target": "stored.dec.decode", "args": ["[1, 2]"]}) == [1, 2]

    def test_refused_module(self, client: Client) -> None:
        code, detail = client.fail("python.call", {"target": "os.getcwd"})
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "module os is not allowed; add it to the pool's allowed_modules setting" in detail.message
        _, detail = client.fail("python.call", {"target": "subprocess.run", "args": [["true"]]})
        assert "module subprocess is not allowed" in detail.message

    def test_no_leak_through_an_allowed_modules_imports(self, client: Client) -> None:
        _, detail = client.fail("python.call", {"target": "json.codecs.open", "args": ["/etc/passwd"]})
        assert "module codecs is not allowed" in detail.message

    def test_private_attributes_refused(self, client: Client) -> None:
        client.execute("python.call", {"target": "collections.Counter", "args": ["ab"], "store_as": "p"})
        _, detail = client.fail("python.call", {"target": "stored.p.__class__"})
        assert "private" in detail.message
        _, detail = client.fail("python.call", {"target": "math._private"})
        assert "private" in detail.message

    def test_stored_object_lifecycle(self, client: Client) -> None:
        stored = client.execute(
            "python.call",
            {"target": "collections.Counter", "args": [["a", "b", "a"]], "store_as": "c"},
            session_id="s1",
        )
        assert stored["type"] == "collections.Counter"
        top = client.execute("python.call", {"target": "stored.c.most_common", "args": [1]}, session_id="s1")
        assert top == [["a", 2]]
        assert client.execute("python.retrieve", {"name": "c"}, session_id="s1") == {"a": 2, "b": 1}
        assert "c" in client.execute("python.stored", {}, session_id="s1")
        # Another session does not see it.
        _, detail = client.fail("python.retrieve", {"name": "c"}, session_id="s2")
        assert "no stored object 'c'" in detail.message
        assert client.execute("python.release", {"name": "c"}, session_id="s1") == {
            "released": True,
            "name": "c",
        }
        assert client.execute("python.release", {"name": "c"}, session_id="s1")["released"] is False
        _, detail = client.fail("python.retrieve", {"name": "c"}, session_id="s1")
        assert detail.kind == Kind.INVALID_ARGUMENTS
        for sid in ("s1", "s2"):
            client.stub.EndSession(bridge_pb2.EndSessionRequest(session_id=sid), timeout=5)

    def test_not_json_results_name_the_type(self, client: Client) -> None:
        _, detail = client.fail("python.call", {"target": "collections.deque", "args": [[1]]})
        assert detail.type == "TypeError" and "deque" in detail.message and "store_as" in detail.message
        client.execute("python.call", {"target": "collections.deque", "args": [[1]], "store_as": "dq"})
        _, detail = client.fail("python.retrieve", {"name": "dq"})
        assert "deque" in detail.message

    def test_bad_targets(self, client: Client) -> None:
        _, detail = client.fail("python.call", {"target": "math.pi"})
        assert "cannot be called" in detail.message
        _, detail = client.fail("python.call", {"target": "math"})
        assert "must look like" in detail.message
        _, detail = client.fail("python.call", {"target": "math.nope"})
        assert "no attribute 'nope'" in detail.message
        _, detail = client.fail("python.call", {"target": "math.sqrt", "args": {"x": 1}})
        assert "args must be a list" in detail.message
        _, detail = client.fail("python.call", {"target": "math.sqrt", "args": [-1]})
        assert detail.kind == Kind.COMMAND_ERROR and detail.type == "ValueError"

    def test_nothing_allowed_by_default(self, launch_default: Client) -> None:
        _, detail = launch_default.fail("python.call", {"target": "math.sqrt", "args": [4]})
        assert "module math is not allowed" in detail.message

    @pytest.fixture
    def launch_default(self) -> Iterator[Client]:
        contract = TestPythonBridge()
        proc, client = contract._launch()
        try:
            yield client
        finally:
            contract._finish(proc, client)

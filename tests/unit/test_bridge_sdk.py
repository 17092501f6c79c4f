"""The handler SDK: decorators, argument binding, async commands, adapter loading.

Behaviour on the wire is checked through a real bridge subprocess serving
``sdk_handlers.SdkHandler``; the rest (discovery, binding, loading) in process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sdk_handlers
from contract.common import (
    BridgeProcess,
    Client,
    Kind,
    gone,
    new_socket_path,
    remove_socket_dir,
    unpayload,
    wait_for,
)
from snakepit_bridge import Handler, NoCallContext, command
from snakepit_bridge._proto import bridge_pb2
from snakepit_bridge.commands import Failure, HandlerDefinitionError, discover
from snakepit_bridge.loader import AdapterError, load_handler
from testprocs import LONG_LIVED

HERE = Path(__file__).resolve().parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return env


def _bridge_argv(socket_path: str, adapter: str = "sdk_handlers:SdkHandler") -> list[str]:
    return [sys.executable, "-m", "snakepit_bridge", "--socket", socket_path, "--adapter", adapter,
            "--parent-pid", str(os.getpid()), "--log-level", "warning"]  # fmt: skip


@pytest.fixture(scope="module")
def sdk() -> Iterator[Client]:
    socket_path = new_socket_path()
    proc = BridgeProcess(_bridge_argv(socket_path), socket_path, _env()).start()
    LONG_LIVED.add(proc.pid)
    try:
        client = proc.wait_serving()
        yield client
        client.close()
        assert proc.stop() == 0
        assert gone(proc.pid)
    finally:
        LONG_LIVED.discard(proc.pid)
        proc.cleanup()
        remove_socket_dir(socket_path)


# -- discovery and binding (in process) -----------------------------------------


def test_discovery_names_docs_and_kinds() -> None:
    table = discover(sdk_handlers.SdkHandler())
    assert table["math.double"].doc == "Twice x."
    assert "double" not in table
    assert table["numbers"].doc == "Count, optionally failing at one number."
    assert table["numbers"].stream and not table["numbers"].is_async
    assert table["async_numbers"].stream and table["async_numbers"].is_async
    assert table["async_add"].is_async and not table["async_add"].stream
    assert not table["boom"].stream
    assert "on_session_start" not in table and "context" not in table


def test_override_keeps_the_command_mark() -> None:
    class Base(Handler):
        @command(name="greet", doc="Say hi.")
        def hello(self) -> str:
            return "hi"

    class Child(Base):
        def hello(self) -> str:
            return "hello"

    table = discover(Child())
    assert table["greet"].method() == "hello"
    assert table["greet"].doc == "Say hi."


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(HandlerDefinitionError, match="'same'"):
        discover(sdk_handlers.DuplicateNames())


def test_positional_only_parameter_is_refused() -> None:
    class Bad(Handler):
        @command
        def f(self, x: int, /) -> int:
            return x

    with pytest.raises(HandlerDefinitionError, match="positional-only"):
        discover(Bad())


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({}, "missing required argument(s) 'x'"),
        ({"x": 1, "y": 2}, "unexpected argument(s) 'y'; it takes 'x'"),
        ({"y": 2}, "missing required argument(s) 'x' and got unexpected argument(s) 'y'"),
        ([1], "must be a JSON object, not an array"),
        ("x", "must be a JSON object, not a string"),
    ],
)
def test_binding_errors_name_the_problem(args: Any, fragment: str) -> None:
    cmd = discover(sdk_handlers.SdkHandler())["math.double"]
    with pytest.raises(Failure) as caught:
        cmd.bind(args)
    assert caught.value.kind == "INVALID_ARGUMENTS"
    assert fragment in caught.value.message


def test_binding_accepts_none_and_var_keywords() -> None:
    table = discover(sdk_handlers.SdkHandler())
    assert table["counters"].bind(None) == {}
    assert table["anything"].bind({"first": 1, "other": 2}) == {"first": 1, "other": 2}


def test_context_outside_a_call() -> None:
    with pytest.raises(NoCallContext):
        _ = sdk_handlers.SdkHandler().context


# -- loading adapters --------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("nocolon", "must look like"),
        ("no_such_module_xyz:Handler", "cannot import module 'no_such_module_xyz'"),
        (
            "sdk_handlers:Missing",
            "has no attribute 'Missing'; handlers there: BrokenInit, DuplicateNames, SdkHandler",
        ),
        ("sdk_handlers:NotAHandler", "not a subclass of snakepit_bridge.Handler"),
        ("sdk_handlers:Boom", "not a subclass"),
    ],
)
def test_load_handler_errors(spec: str, fragment: str) -> None:
    with pytest.raises(AdapterError, match=None) as caught:
        load_handler(spec)
    assert fragment in str(caught.value)


def test_load_handler_accepts_both_spellings() -> None:
    assert load_handler("sdk_handlers:SdkHandler") is sdk_handlers.SdkHandler
    assert load_handler("sdk_handlers.SdkHandler") is sdk_handlers.SdkHandler


@pytest.mark.parametrize(
    ("adapter", "fragment"),
    [
        ("sdk_handlers:Missing", "has no attribute 'Missing'"),
        ("no_such_module_xyz:H", "cannot import module"),
        ("sdk_handlers:BrokenInit", "creating the handler raised Boom: cannot start"),
        ("sdk_handlers:DuplicateNames", "two methods are registered as command 'same'"),
    ],
)
def test_cli_bad_adapter_exits_2(adapter: str, fragment: str, tmp_path: Path) -> None:
    result = subprocess.run(
        _bridge_argv(str(tmp_path / "s.sock"), adapter),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_needs_a_socket() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "snakepit_bridge"], env=_env(), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "--socket" in result.stderr


# -- behaviour on the wire -------------------------------------------------------


def test_named_and_var_keyword_commands(sdk: Client) -> None:
    assert sdk.execute("math.double", {"x": 21}) == 42
    assert sdk.execute("anything", {"first": 1, "a-b": 2, "": 3}) == {"first": 1, "rest": {"a-b": 2, "": 3}}


def test_context_fields(sdk: Client) -> None:
    request = sdk.request("context_seen", {}, session_id="ctx", request_id="task-1", timeout=2.0)
    seen = unpayload(sdk.stub.Execute(request, timeout=10).result)
    assert seen["session_id"] == "ctx" and seen["request_id"] == "task-1"
    assert 0 < seen["remaining"] <= 2.0  # the soft deadline wins over the gRPC one
    assert seen["cancelled"] is False
    assert sdk.execute("context_seen", {}, session_id="ctx")["calls"] == 2
    stateless = sdk.execute("context_seen", {}, timeout=10)
    assert stateless["session_id"] is None and stateless["request_id"] is None
    assert stateless["remaining"] > 0  # from the gRPC deadline
    sdk.stub.EndSession(bridge_pb2.EndSessionRequest(session_id="ctx"), timeout=5)


def test_invalid_arguments_from_the_command(sdk: Client) -> None:
    code, detail = sdk.fail("refuse", {"value": 7})
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert detail.kind == Kind.INVALID_ARGUMENTS
    assert "value 7 is not acceptable" in detail.message


def test_user_exception_type_and_traceback(sdk: Client) -> None:
    for name in ("boom", "async_boom"):
        code, detail = sdk.fail(name, {})
        assert code == grpc.StatusCode.UNKNOWN
        assert detail.kind == Kind.COMMAND_ERROR
        assert detail.type == "Boom"
        assert "boom" in detail.message
        # The bridge's own frames (and the event loop's) are left out.
        assert "sdk_handlers.py" in detail.traceback.splitlines()[1]


def test_unencodable_result_names_the_type(sdk: Client) -> None:
    _code, detail = sdk.fail("unencodable", {})
    assert detail.kind == Kind.COMMAND_ERROR
    assert "set" in detail.message and "unencodable" in detail.message
    assert sdk.execute("math.double", {"x": 1}) == 2


def test_async_commands_share_one_loop_thread(sdk: Client) -> None:
    first = sdk.execute("async_add", {"a": 1, "b": 2}, session_id="aio")
    second = sdk.execute("async_add", {"a": 3, "b": 4})
    assert first["sum"] == 3 and second["sum"] == 7
    assert first["thread"] == second["thread"] == "snakepit-asyncio"
    assert first["session_id"] == "aio" and second["session_id"] is None
    sdk.stub.EndSession(bridge_pb2.EndSessionRequest(session_id="aio"), timeout=5)


def test_async_command_is_cancelled_with_the_call(sdk: Client) -> None:
    before = sdk.execute("counters")["async_cancelled"]
    with pytest.raises(grpc.RpcError) as caught:
        sdk.execute("async_sleep", {"seconds": 30}, timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    wait_for(lambda: sdk.execute("counters")["async_cancelled"] > before, 5, "the coroutine to be cancelled")


def test_stream_error_after_chunks(sdk: Client) -> None:
    call = sdk.stub.ExecuteStream(sdk.request("numbers", {"count": 10, "fail_at": 3}), timeout=10)
    received = []
    with pytest.raises(grpc.RpcError) as caught:
        for message in call:
            received.extend(message.chunks)
    assert len(received) == 3
    assert caught.value.code() == grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]


def test_async_generator_stream(sdk: Client) -> None:
    chunks = sdk.chunks("async_numbers", {"count": 5}, session_id="agen")
    assert chunks == [{"n": n, "session_id": "agen"} for n in range(5)]
    sdk.stub.EndSession(bridge_pb2.EndSessionRequest(session_id="agen"), timeout=5)


def test_async_generator_closed_on_cancel(sdk: Client) -> None:
    before = sdk.execute("counters")["closed"].get("async_numbers", 0)
    call = sdk.stub.ExecuteStream(sdk.request("async_numbers", {"count": 0, "pause": 30}), timeout=60)
    next(call)
    cancelled_at = time.monotonic()
    call.cancel()
    wait_for(
        lambda: sdk.execute("counters")["closed"].get("async_numbers", 0) > before,
        5,
        "the async generator's finally",
        interval=0.005,
    )
    assert time.monotonic() - cancelled_at < 0.5


def test_backpressure_bounds_what_is_produced(sdk: Client) -> None:
    # The reader takes one message and stops reading: the producer must stop
    # soon after (bounded queue + flow control), not run ahead without bound.
    call = sdk.stub.ExecuteStream(sdk.request("endless", {"size": 10_000}), timeout=60)
    next(call)
    produced = [sdk.execute("counters")["produced"] for _ in range(50)]
    call.cancel()
    assert max(produced) < 3000, f"produced {max(produced)} chunks of 10 kB for a reader that stopped"
    before = produced[-1]
    wait_for(
        lambda: sdk.execute("counters")["closed"].get("endless", 0) >= 1, 5, "the endless generator to close"
    )
    assert before > 0


def test_session_hook_failure(sdk: Client) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        sdk.stub.InitSession(bridge_pb2.InitSessionRequest(session_id="bad-1"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    code, detail = sdk.fail("context_seen", {}, session_id="bad-2")
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert detail.kind == Kind.SESSION_ERROR
    assert "session bad-2 refused" in detail.message
    assert sdk.execute("math.double", {"x": 2}) == 4

"""The contract suite against the Ruby bridge, plus what only it promises.

The Ruby gRPC code under bridges/ruby/lib/snakepit_bridge/proto is generated
(``make ruby-proto``) and committed; a test here checks it is fresh.
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

import pytest
from snakepit_bridge._proto import bridge_pb2
from testprocs import missing_service

from snakepit_celery.config import PoolConfig
from snakepit_celery.engine.adapters import resolve_adapter

from .base import BridgeContract, Launch
from .common import Client

ROOT = Path(__file__).resolve().parents[2]
RUBY_DIR = ROOT / "bridges" / "ruby"
SCRIPT = RUBY_DIR / "bin" / "snakepit-bridge-ruby"
GENERATED = RUBY_DIR / "lib" / "snakepit_bridge" / "proto"


def ruby_command() -> list[str]:
    """``ruby bin/snakepit-bridge-ruby``; skips (fails under CI=true) without Ruby and its gRPC."""
    ruby = shutil.which("ruby")
    if ruby is None:
        missing_service("no `ruby` on PATH: run `make ruby-bridge` (Debian's ruby, ruby-grpc)")
    probe = subprocess.run(
        [ruby, "-e", "require 'grpc'; require 'google/protobuf'"], capture_output=True, timeout=60
    )
    if probe.returncode != 0:
        missing_service(
            "Ruby cannot load grpc/google-protobuf: run `make ruby-bridge` (ruby-grpc, ruby-google-protobuf)"
        )
    return [ruby, str(SCRIPT)]


class TestRubyBridge(BridgeContract):
    language = "ruby"
    zero_division_type = "ZeroDivisionError"

    def bridge_command(self) -> list[str]:
        ruby_command()  # skips (or fails under CI) with the reason when the runtime is missing
        # Launched as the pool launches it: through the ruby adapter.
        return resolve_adapter("ruby").command(PoolConfig(name="ruby", adapter="ruby"))

    # -- Ruby specifics ---------------------------------------------------------

    def test_describe_names_handler(self, client: Client) -> None:
        reply = client.stub.Describe(bridge_pb2.DescribeRequest(), timeout=5)
        assert reply.handler == "ShowcaseHandler"
        assert reply.runtime_version[0].isdigit()

    def test_traceback_is_the_ruby_backtrace(self, client: Client) -> None:
        _, detail = client.fail("compute", {"operation": "divide", "a": 1, "b": 0})
        assert detail.message == "division by zero"
        assert detail.traceback.startswith("ZeroDivisionError: division by zero")
        assert "showcase.rb" in detail.traceback

    def test_integers_beyond_64_bits_stay_exact(self, client: Client) -> None:
        assert client.execute("echo", {"n": 2**70, "f": 2.0})["echoed"] == {"n": 2**70, "f": 2.0}
        assert type(client.execute("echo", {"f": 2.0})["echoed"]["f"]) is float
        result = client.execute("compute", {"operation": "power", "a": 3, "b": 50})["result"]
        assert result == 3**50 and type(result) is int

    def test_user_handler_file(self, launch: Launch, tmp_path: Path) -> None:
        handler = tmp_path / "handler.rb"
        handler.write_text(
            "class Greeter < SnakepitBridge::Handler\n"
            "  command :hello, doc: 'Say hello.'\n"
            "  def hello(args, ctx)\n"
            "    { greeting: \"hello #{args['name']}\", session: ctx.session_id, bytes: args['name'].b }\n"
            "  end\n"
            "\n"
            "  stream :count, doc: 'Count.'\n"
            "  def count(args, _ctx)\n"
            "    args['to'].times { |n| yield({ n: n }) }\n"
            "  end\n"
            "end\n"
        )
        _proc, client = launch(["--adapter", str(handler)])
        assert client.execute("hello", {"name": "ada"}, session_id="s") == {
            "greeting": "hello ada",
            "session": "s",
            "bytes": b"ada",
        }
        assert client.chunks("count", {"to": 3}) == [{"n": 0}, {"n": 1}, {"n": 2}]
        reply = client.stub.Describe(bridge_pb2.DescribeRequest(), timeout=5)
        assert reply.handler == "handler.rb:Greeter"
        assert [(c.name, c.stream) for c in reply.commands] == [("count", True), ("hello", False)]


@pytest.mark.parametrize("bad", ["--parent-pid=abc", "--bogus=1"])
def test_bad_cli_arguments_exit_2(bad: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [*ruby_command(), "--socket", str(tmp_path / "b.sock"), bad],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert bad.split("=")[0] in result.stderr


def test_generated_ruby_code_is_fresh(tmp_path: Path) -> None:
    """The committed Ruby gRPC code matches what grpc_tools_ruby_protoc makes from the proto now."""
    protoc = shutil.which("grpc_tools_ruby_protoc")
    if protoc is None:
        missing_service("no grpc_tools_ruby_protoc: run `make ruby-bridge` (Debian's ruby-grpc-tools)")
    proto = "snakepit/bridge/v1/bridge.proto"
    subprocess.run(
        [protoc, "-I", str(ROOT / "protos"), f"--ruby_out={tmp_path}", f"--grpc_out={tmp_path}", proto],
        check=True,
        timeout=60,
    )
    for name in ("bridge_pb.rb", "bridge_services_pb.rb"):
        fresh = tmp_path / "snakepit" / "bridge" / "v1" / name
        committed = GENERATED / "snakepit" / "bridge" / "v1" / name
        assert committed.is_file(), f"{committed} is missing: run `make ruby-proto`"
        assert filecmp.cmp(fresh, committed, shallow=False), f"{committed} is stale: run `make ruby-proto`"

"""The contract suite against the Node.js bridge, plus what only it promises."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from snakepit_bridge._proto import bridge_pb2
from testprocs import missing_service

from snakepit_celery.config import PoolConfig
from snakepit_celery.engine.adapters import resolve_adapter

from .base import BridgeContract, Launch
from .common import Client

NODE_DIR = Path(__file__).resolve().parents[2] / "bridges" / "node"
SCRIPT = NODE_DIR / "bin" / "snakepit-bridge.js"


def node_command() -> list[str]:
    """``node bin/snakepit-bridge.js``; skips (fails under CI=true) when Node.js is not installed."""
    node = shutil.which("node")
    if node is None:
        missing_service("no `node` on PATH: install Node.js 20")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        missing_service(
            f"the Node.js bridge's packages are not installed: run `make node-bridge` ({NODE_DIR})"
        )
    return [str(node), str(SCRIPT)]


class TestNodeBridge(BridgeContract):
    language = "node"
    zero_division_type = "RangeError"

    def bridge_command(self) -> list[str]:
        node_command()  # skips (or fails under CI) with the reason when the runtime is missing
        # Launched as the pool launches it: through the node adapter.
        return resolve_adapter("node").command(PoolConfig(name="node", adapter="node"))

    # -- Node.js specifics -------------------------------------------------------

    def test_describe_names_handler(self, client: Client) -> None:
        reply = client.stub.Describe(bridge_pb2.DescribeRequest(), timeout=5)
        assert reply.handler == "ShowcaseHandler"
        assert reply.runtime_version.startswith("v")

    def test_traceback_is_the_js_stack(self, client: Client) -> None:
        _, detail = client.fail("compute", {"operation": "divide", "a": 1, "b": 0})
        assert detail.message == "division by zero"
        assert detail.traceback.startswith("RangeError: division by zero")
        assert "arith.js" in detail.traceback

    def test_integers_beyond_53_bits_stay_exact(self, client: Client) -> None:
        assert client.execute("echo", {"n": 2**70, "m": -(2**64) - 1})["echoed"] == {
            "n": 2**70,
            "m": -(2**64) - 1,
        }
        result = client.execute("compute", {"operation": "power", "a": 3, "b": 50})["result"]
        assert result == 3**50 and type(result) is int

    def test_user_handler_file(self, launch: Launch, tmp_path: Path) -> None:
        handler = tmp_path / "handler.js"
        handler.write_text(
            f"const {{ Handler }} = require({str(NODE_DIR / 'src' / 'index.js')!r});\n"
            "class Greeter extends Handler {\n"
            "  constructor() {\n"
            "    super();\n"
            "    this.command('hello', (args, ctx) =>\n"
            "      ({ greeting: `hello ${args.name}`, session: ctx.sessionId }));\n"
            "    this.command('count', async function* (args) {\n"
            "      for (let n = 0; n < args.to; n += 1) yield { n };\n"
            "    });\n"
            "  }\n"
            "  onSessionStart(sessionId, state, data) { state.data = data; }\n"
            "}\n"
            "module.exports = Greeter;\n"
        )
        _proc, client = launch(["--adapter", str(handler)])
        assert client.execute("hello", {"name": "ada"}, session_id="s") == {
            "greeting": "hello ada",
            "session": "s",
        }
        assert client.chunks("count", {"to": 3}) == [{"n": 0}, {"n": 1}, {"n": 2}]
        reply = client.stub.Describe(bridge_pb2.DescribeRequest(), timeout=5)
        assert reply.handler == "handler.js:Greeter"
        assert [(c.name, c.stream) for c in reply.commands] == [("count", True), ("hello", False)]


@pytest.mark.parametrize("bad", ["--parent-pid=abc", "--bogus=1"])
def test_bad_cli_arguments_exit_2(bad: str, tmp_path: Path) -> None:
    import subprocess

    command = node_command()
    result = subprocess.run(
        [*command, "--socket", str(tmp_path / "b.sock"), bad], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert bad.split("=")[0] in result.stderr

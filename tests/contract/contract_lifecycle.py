"""The contract's session and lifecycle tests: state, hooks, SIGTERM, parent death."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
from snakepit_bridge._proto import bridge_pb2

from .common import (
    STOP_TIMEOUT,
    Client,
    ContractHooks,
    Launch,
    gone,
    new_socket_path,
    remove_socket_dir,
    wait_for,
)

#: Seconds a bridge has to disappear after its parent is killed.
PARENT_DEATH_BOUND = 5.0

# Runs the bridge as its child, with --parent-pid set to its own pid; prints the
# bridge's pid, then waits to be killed. The test kills it with SIGKILL.
_INTERMEDIATE = r"""
import json, os, subprocess, sys, time
argv = [os.getpid() if a == "{parent_pid}" else a for a in json.loads(sys.argv[1])]
child = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL)
print(child.pid, flush=True)
while True:
    time.sleep(60)
"""


class SessionLifecycleContract(ContractHooks):
    # -- sessions -------------------------------------------------------------

    def test_session_isolation(self, client: Client) -> None:
        client.execute("set_counter", {"value": 100})
        client.execute("set_counter", {"value": 1}, session_id="iso-a")
        client.execute("set_counter", {"value": 2}, session_id="iso-b")
        assert client.execute("increment_counter", {"by": 5}, session_id="iso-a") == {"value": 6}
        assert client.execute("increment_counter", {}, session_id="iso-b") == {"value": 3}
        assert client.execute("get_counter") == {"value": 100}
        for sid in ("iso-a", "iso-b"):
            client.stub.EndSession(bridge_pb2.EndSessionRequest(session_id=sid), timeout=5)

    def test_session_hooks_and_data(self, client: Client) -> None:
        before = client.execute("info")
        data = json.dumps({"counter": 41}).encode()
        client.stub.InitSession(
            bridge_pb2.InitSessionRequest(session_id="hooks", data=bridge_pb2.Payload(json=data)), timeout=5
        )
        assert client.execute("increment_counter", {}, session_id="hooks") == {"value": 42}
        # A second InitSession of a running session does not restart it.
        client.stub.InitSession(
            bridge_pb2.InitSessionRequest(session_id="hooks", data=bridge_pb2.Payload(json=data)), timeout=5
        )
        assert client.execute("get_counter", {}, session_id="hooks") == {"value": 42}
        started = client.execute("info")
        assert started["sessions_started"] == before["sessions_started"] + 1
        assert started["sessions_active"] == before["sessions_active"] + 1
        ended = client.stub.EndSession(bridge_pb2.EndSessionRequest(session_id="hooks"), timeout=5)
        assert ended.existed is True
        after = client.execute("info")
        assert after["sessions_ended"] == before["sessions_ended"] + 1
        assert after["sessions_active"] == before["sessions_active"]
        again = client.stub.EndSession(bridge_pb2.EndSessionRequest(session_id="hooks"), timeout=5)
        assert again.existed is False
        # The state went with the session: a new one starts from zero.
        assert client.execute("get_counter", {}, session_id="hooks") == {"value": 0}
        client.stub.EndSession(bridge_pb2.EndSessionRequest(session_id="hooks"), timeout=5)

    def test_session_on_stream(self, client: Client) -> None:
        client.execute("set_counter", {"value": 9}, session_id="streamer")
        assert len(client.chunks("ping_stream", {"count": 2, "interval": 0}, session_id="streamer")) == 2
        assert client.execute("get_counter", {}, session_id="streamer") == {"value": 9}
        client.stub.EndSession(bridge_pb2.EndSessionRequest(session_id="streamer"), timeout=5)

    # -- lifecycle (private bridges) --------------------------------------------

    def test_sigterm_exits_cleanly(self, launch: Launch) -> None:
        proc, _client = launch()
        started = time.monotonic()
        assert proc.stop(signal.SIGTERM) == 0, proc.log()
        assert time.monotonic() - started < STOP_TIMEOUT
        assert not os.path.exists(proc.socket_path)

    def test_sigterm_during_stream(self, launch: Launch) -> None:
        proc, client = launch()
        call = client.stub.ExecuteStream(
            client.request("ping_stream", {"count": 0, "interval": 0.01}), timeout=30
        )
        next(call)
        assert proc.stop(signal.SIGTERM) == 0, proc.log()
        with pytest.raises(grpc.RpcError):
            for _ in call:
                pass

    def test_payload_over_the_limit(self, launch: Launch) -> None:
        _proc, client = launch(["--max-message-bytes", "100000"])
        code, detail = client.fail("echo", {"data": "x" * 150_000})
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert detail.type == "PayloadTooLarge"
        assert "100000" in detail.message  # names the limit
        assert client.execute("echo", {"data": "x" * 1000})["echoed"]["data"] == "x" * 1000

    def test_parent_death_ends_bridge(self) -> None:
        socket_path = new_socket_path()
        argv = self.bridge_argv(socket_path, "{parent_pid}")
        parent = subprocess.Popen(
            [sys.executable, "-c", _INTERMEDIATE, json.dumps(argv)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=self.bridge_env(),
        )
        bridge_pid = 0
        try:
            assert parent.stdout is not None
            bridge_pid = int(parent.stdout.readline())
            client = Client(socket_path)
            try:
                wait_for(client.serving, 20, "the bridge under the intermediate parent to serve")
            finally:
                client.close()
            parent.kill()
            parent.wait()
            started = time.monotonic()
            wait_for(lambda: gone(bridge_pid), PARENT_DEATH_BOUND, "the bridge to exit after its parent died")
            assert time.monotonic() - started < PARENT_DEATH_BOUND
        finally:
            if parent.poll() is None:
                parent.kill()
                parent.wait()
            if bridge_pid and not gone(bridge_pid):
                os.kill(bridge_pid, signal.SIGKILL)
            if parent.stdout is not None:
                parent.stdout.close()
            remove_socket_dir(socket_path)

"""A bridge that died before a call reached it costs that call nothing, against real bridges.

The supervisor learns of a death a moment after it happens; a call in that
moment must not be handed the dead bridge (checkout looks at its pidfd), and
a call whose bridge died before it could be sent runs on another one, while
a call that was running when its bridge died still fails and never runs twice.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from snakepit_bridge._proto import bridge_pb2

from snakepit_celery.engine.adapters import resolve_adapter
from snakepit_celery.engine.bridge import Bridge, spawn_process
from snakepit_celery.engine.rpc import encode_payload, never_sent
from snakepit_celery.errors import BridgeCrashed
from tests.handlers import PoolFactory, Recorder, pid_alive, pool_config, wait_until

START_METHODS = ["spawn", "preload"]


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    factory = PoolFactory()
    yield factory
    factory.close()


def kill_and_wait_dead(pid: int) -> None:
    """SIGKILL ``pid`` and return the moment it has exited (before anyone reaps it).

    NOTE: psutil's "zombie" is not enough: the main thread of a multi-threaded
    bridge shows as a zombie while its other threads still tear down, with its
    sockets open. A pidfd turns readable only once the whole process is gone.
    """
    pidfd = os.pidfd_open(pid)
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        assert poller.poll(5000), f"bridge {pid} still runs 5 s after SIGKILL"
    finally:
        os.close(pidfd)
    assert not pid_alive(pid)


def next_pid(pool: Any) -> int:
    """The pid of the bridge the next call is handed: the head of the idle list."""
    with pool._lock:
        return int(pool._queue.idle[0].bridge.pid)


def pids(pool: Any) -> set[int]:
    return {b["pid"] for b in pool.stats()["bridges"]}


def refilled(pool: Any, victim: int) -> bool:
    stats = pool.stats()
    return bool(victim not in pids(pool) and stats["workers"] == stats["available"] == stats["size"])


def exited(recorder: Any) -> list[tuple[int, str]]:
    return [(e["pid"], e["reason"]) for e in recorder.named("bridge_exited")]


@pytest.mark.parametrize("size", [1, 2])
@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_plain_call_after_an_idle_bridge_was_killed_succeeds(
    make_pool: PoolFactory, start_method: str, size: int
) -> None:
    recorder = Recorder()
    pool = make_pool(size=size, start_method=start_method, telemetry=recorder)
    victim = next_pid(pool)
    kill_and_wait_dead(victim)
    assert pool.execute("info")["pid"] != victim  # not BridgeCrashed
    wait_until(lambda: refilled(pool, victim), 10.0, "the pool is full again")
    stats = pool.stats()
    assert (stats["requests"], stats["errors"], stats["restarts"]) == (1, 0, 1)
    assert [e["outcome"] for e in recorder.named("request_finished")] == ["ok"]
    wait_until(lambda: exited(recorder), 5.0, "the exit is reported")
    assert exited(recorder) == [(victim, "signal SIGKILL")]


@pytest.mark.parametrize("start_method", START_METHODS)
def test_every_idle_bridge_killed_the_next_call_waits_for_a_replacement(
    make_pool: PoolFactory, start_method: str
) -> None:
    pool = make_pool(size=2, start_method=start_method)
    victims = pids(pool)
    for pid in victims:
        kill_and_wait_dead(pid)
    assert pool.execute("info")["pid"] not in victims
    wait_until(lambda: not (pids(pool) & victims) and pool.stats()["workers"] == 2, 10.0, "both replaced")
    stats = pool.stats()
    assert (stats["requests"], stats["errors"], stats["restarts"]) == (1, 0, 2)


def test_a_session_call_after_its_idle_bridge_was_killed_runs_on_the_replacement(
    make_pool: PoolFactory,
) -> None:
    pool = make_pool(size=2, session_loader=lambda sid: {"counter": 41})
    assert pool.execute("increment_counter", session_id="s1")["value"] == 42
    victim = pool.sessions()["s1"]
    kill_and_wait_dead(victim)
    # InitSession ran again on the new bridge, from the loader's data.
    assert pool.execute("increment_counter", session_id="s1")["value"] == 42
    assert pool.sessions()["s1"] not in (0, victim)
    stats = pool.stats()
    assert (stats["requests"], stats["errors"], stats["restarts"]) == (2, 0, 1)


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_call_whose_bridge_died_before_it_was_sent_runs_on_the_replacement(
    make_pool: PoolFactory, start_method: str
) -> None:
    """The session loader runs between checkout and the first RPC: it kills the bridge there.

    It waits until the pool has seen the exit (the channel is dropped then),
    so the call is refused by gRPC before it is sent: provably never ran.
    """
    recorder = Recorder()
    victims: list[int] = []

    def loader(session_id: str) -> dict[str, Any]:
        if not victims:
            victims.append(pool.sessions()[session_id])
            kill_and_wait_dead(victims[0])
            wait_until(lambda: exited(recorder), 5.0, "the pool saw the exit")
        return {"counter": 7}

    pool = make_pool(size=1, start_method=start_method, telemetry=recorder, session_loader=loader)
    assert pool.execute("get_counter", session_id="s1") == {"value": 7}
    assert victims and pool.sessions()["s1"] not in (0, victims[0])
    stats = pool.stats()
    assert (stats["requests"], stats["errors"], stats["restarts"]) == (1, 0, 1)
    assert [e["outcome"] for e in recorder.named("request_finished")] == ["ok"]


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_call_running_when_its_bridge_is_killed_fails_and_never_runs_twice(
    make_pool: PoolFactory, start_method: str, tmp_path: Path
) -> None:
    pool = make_pool(size=2, start_method=start_method)
    log, gate = tmp_path / "log", tmp_path / "gate"
    outcome: dict[str, Any] = {}

    def caller() -> None:
        args = {"path": str(gate), "token": "t1", "log": str(log), "timeout": 30}
        try:
            outcome["result"] = pool.execute("wait_file", args)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=caller)
    thread.start()
    wait_until(lambda: log.exists() and log.read_text(), 5.0, "the call started")
    (busy,) = [b["pid"] for b in pool.stats()["bridges"] if b["state"] == "busy"]
    kill_and_wait_dead(busy)
    thread.join(5.0)
    gate.touch()  # a wrong second run would block on the gate; let it end instead
    thread.join(35.0)
    assert isinstance(outcome.get("error"), BridgeCrashed), outcome
    assert log.read_text().split() == ["t1"]
    wait_until(lambda: refilled(pool, busy), 10.0, "the pool is full again")
    stats = pool.stats()
    assert (stats["requests"], stats["errors"], stats["restarts"]) == (1, 1, 1)


def test_never_sent_tells_a_refused_connection_from_a_call_cut_off(tmp_path: Path) -> None:
    """The classifier on the errors real gRPC raises against a real bridge."""
    config = pool_config(size=1)
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    socket_path = str(run_dir / "b.sock")
    spec = resolve_adapter(config.adapter).launch(
        config, socket_path=socket_path, run_id="never-sent", parent_pid=os.getpid()
    )
    bridge = Bridge(spawn_process(spec), socket_path=socket_path, max_message_bytes=1 << 20)
    failures: dict[str, grpc.RpcError] = {}
    try:
        bridge.wait_serving(time.monotonic() + 20.0)
        sleep = bridge_pb2.ExecuteRequest(
            command="sleep", args=encode_payload({"seconds": 30}, limit=1 << 20)
        )
        call = bridge.execute_call.future(sleep, timeout=20.0)
        wait_until(lambda: bridge.active_calls(1.0) == 1, 5.0, "the command runs")
        kill_and_wait_dead(bridge.pid)
        with pytest.raises(grpc.RpcError) as cut_off:
            call.result()
        failures["cut off"] = cut_off.value
        ping = bridge_pb2.ExecuteRequest(command="ping", args=encode_payload({}, limit=1 << 20))
        with pytest.raises(grpc.RpcError) as refused:
            bridge.execute_call(ping, timeout=5.0)
        failures["refused"] = refused.value
    finally:
        bridge.kill()
        bridge.process.reap()
        bridge.close_channel()
        bridge.process.close()
    assert never_sent(failures["refused"]), failures["refused"]
    assert not never_sent(failures["cut off"]), failures["cut off"]

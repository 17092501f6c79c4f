"""Crashes, hard timeouts and replacement, against real bridge processes."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from snakepit_celery.errors import BridgeCrashed, BridgeStartError, CommandTimeout
from tests.handlers import PoolFactory, Recorder, pid_alive, wait_until


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    factory = PoolFactory()
    yield factory
    factory.close()


def full(pool: Any) -> bool:
    stats = pool.stats()
    return bool(stats["workers"] == stats["size"] and stats["available"] == stats["size"])


def busy_pid(pool: Any) -> int:
    """The pid of the (only) busy bridge, once there is one."""

    def find() -> int | None:
        for bridge in pool.stats()["bridges"]:
            if bridge["state"] == "busy":
                return int(bridge["pid"])
        return None

    return int(wait_until(find, 5.0, "a bridge is busy"))


@pytest.mark.parametrize("start_method", ["spawn", "preload"])
def test_sigkill_mid_call_fails_that_call_fast_and_the_pool_refills(
    make_pool: PoolFactory, start_method: str
) -> None:
    recorder = Recorder()
    pool = make_pool(size=2, start_method=start_method, telemetry=recorder)
    before = {b["pid"] for b in pool.stats()["bridges"]}
    outcome: dict[str, Any] = {}

    def victim() -> None:
        try:
            outcome["result"] = pool.execute("sleep", {"seconds": 30})
        except BaseException as exc:
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=victim)
    thread.start()
    pid = busy_pid(pool)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    thread.join(5.0)
    assert isinstance(outcome.get("error"), BridgeCrashed), outcome
    assert outcome["at"] - killed_at < 1.0
    assert str(pid) in str(outcome["error"])

    wait_until(lambda: full(pool), 5.0, "the pool is full again")
    after = {b["pid"] for b in pool.stats()["bridges"]}
    assert pid not in after and len(after) == 2 and len(after & before) == 1
    assert pool.stats()["restarts"] == 1 and pool.stats()["errors"] == 1
    assert not pid_alive(pid)
    for _ in range(4):
        assert pool.execute("ping")["status"] == "ok"
    assert [e["outcome"] for e in recorder.named("request_finished")] == ["crashed"] + ["ok"] * 4
    exits = recorder.named("bridge_exited")
    assert [(e["pid"], e["reason"]) for e in exits] == [(pid, "signal SIGKILL")]
    assert len(recorder.named("bridge_started")) == 3


def test_other_callers_never_notice_a_crash(make_pool: PoolFactory) -> None:
    pool = make_pool(size=3)
    errors: list[BaseException] = []
    done = threading.Event()
    counts = [0, 0]

    def steady(i: int) -> None:
        while not done.is_set():
            try:
                pool.execute("ping")
                counts[i] += 1
            except BaseException as exc:
                errors.append(exc)

    workers = [threading.Thread(target=steady, args=(i,)) for i in range(2)]
    for worker in workers:
        worker.start()
    with pytest.raises(BridgeCrashed):
        pool.execute("kill_self")
    with pytest.raises(BridgeCrashed):
        pool.execute("crash", {"code": 7})
    wait_until(
        lambda: pool.stats()["restarts"] == 2 and pool.stats()["workers"] == 3, 5.0, "two replacements"
    )
    done.set()
    for worker in workers:
        worker.join()
    assert errors == [] and min(counts) > 0


def test_idempotent_call_is_retried_once_on_a_fresh_bridge(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1)
    result: dict[str, Any] = {}

    def caller() -> None:
        result["value"] = pool.execute("sleep", {"seconds": 0.5}, idempotent=True)

    thread = threading.Thread(target=caller)
    thread.start()
    pid = busy_pid(pool)
    os.kill(pid, signal.SIGKILL)
    thread.join(10.0)
    assert result["value"]["cancelled"] is False
    assert pool.execute("info")["pid"] != pid
    stats = pool.stats()
    assert stats["requests"] == 3 and stats["errors"] == 1 and stats["restarts"] == 1


def test_crash_is_not_retried_without_idempotent(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1)
    with pytest.raises(BridgeCrashed):
        pool.execute("crash")
    assert pool.stats()["requests"] == 1


@pytest.mark.parametrize("how", ["caller", "command_timeouts", "pool"])
def test_hard_timeout_kills_and_replaces_the_bridge(make_pool: PoolFactory, how: str) -> None:
    options: dict[str, Any] = {"size": 1}
    kwargs: dict[str, Any] = {}
    if how == "caller":
        kwargs["timeout"] = 0.5
    elif how == "command_timeouts":
        options["command_timeouts"] = {"hang": 0.5}
        options["timeout"] = 60.0
    else:
        options["timeout"] = 0.5
    recorder = Recorder()
    pool = make_pool(telemetry=recorder, **options)
    old = pool.execute("info")["pid"]
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as caught:
        pool.execute("hang", {"seconds": 60}, **kwargs)
    assert time.monotonic() - started < 5.0
    assert "0.5" in str(caught.value) and str(old) in str(caught.value)
    # The slot is not lost: a fresh bridge serves the next call.
    assert pool.execute("info")["pid"] != old
    wait_until(lambda: not pid_alive(old), 5.0, "the stuck bridge is gone")
    stats = pool.stats()
    assert stats["workers"] == 1 and stats["restarts"] == 1 and stats["errors"] == 1
    assert [e["outcome"] for e in recorder.named("request_finished")] == ["ok", "timeout", "ok"]
    (exited,) = recorder.named("bridge_exited")
    assert exited["pid"] == old and "hard timeout" in exited["reason"]


def test_an_idle_bridge_that_dies_is_replaced_at_once(make_pool: PoolFactory) -> None:
    pool = make_pool(size=2)
    victim = pool.stats()["bridges"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: victim not in {b["pid"] for b in pool.stats()["bridges"]} and full(pool), 5.0, "replaced"
    )
    assert pool.stats()["restarts"] == 1 and pool.stats()["errors"] == 0


def test_close_ends_and_reaps_every_bridge(make_pool: PoolFactory) -> None:
    pool = make_pool(size=3)
    pids = [b["pid"] for b in pool.stats()["bridges"]]
    pool.close(2.0)
    me = psutil.Process()
    assert [c for c in me.children(recursive=True) if c.pid in pids] == []
    assert not any(pid_alive(pid) for pid in pids)
    assert list((pool.run_dir / "procs").iterdir()) == []


def blocked_socket(factory: PoolFactory, slot: int) -> Path:
    """A directory where the next pool's ``slot`` will put its socket: unlinking it fails
    with IsADirectoryError, an OSError no part of the pool raises on purpose."""
    path = factory.base / f"r{len(factory.pools)}" / f"test.{slot}.0.sock"
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize("start_method", ["spawn", "preload"])
def test_an_unexpected_start_failure_names_its_cause(make_pool: PoolFactory, start_method: str) -> None:
    blocked_socket(make_pool, 0)
    with pytest.raises(BridgeStartError) as caught:
        make_pool(size=1, start_method=start_method, startup_timeout=3.0)
    assert "no bridge could be started: IsADirectoryError" in str(caught.value)
    assert isinstance(caught.value.__cause__, IsADirectoryError)


def test_an_unexpected_start_failure_is_retried_until_it_clears(
    make_pool: PoolFactory, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = blocked_socket(make_pool, 0)
    pool = make_pool(size=2, startup_timeout=3.0)  # slot 1 serves, slot 0 keeps retrying
    assert pool.stats()["workers"] == 1
    logged = wait_until(
        lambda: [r for r in caplog.records if "IsADirectoryError" in r.getMessage()], 5.0, "the cause logged"
    )
    assert "slot 0" in logged[0].getMessage() and logged[0].exc_info is not None
    blocked.rmdir()
    wait_until(lambda: full(pool), 10.0, "slot 0 started once its socket path was free")
    assert pool.execute("ping")["status"] == "ok"

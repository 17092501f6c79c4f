"""Checkout limits under load: PoolSaturated and QueueTimeout exact, FIFO waiters, LIFO idle bridges."""

from __future__ import annotations

import contextlib
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snakepit_celery.errors import PoolClosed, PoolSaturated, QueueTimeout, SnakepitError
from tests.handlers import PoolFactory, wait_until


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    factory = PoolFactory()
    yield factory
    factory.close()


def run_all(targets: list[Any]) -> list[threading.Thread]:
    threads = [threading.Thread(target=t) for t in targets]
    for thread in threads:
        thread.start()
    return threads


def test_saturation_is_exact_under_32_callers(make_pool: PoolFactory, tmp_path: Path) -> None:
    size, max_queue, callers = 2, 3, 32
    pool = make_pool(size=size, max_queue=max_queue, queue_timeout=60.0)
    pids = {b["pid"] for b in pool.stats()["bridges"]}
    gate, log = tmp_path / "open", tmp_path / "ran.log"
    results: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def caller(i: int) -> None:
        try:
            reply = pool.execute("wait_file", {"path": str(gate), "token": str(i), "log": str(log)})
            outcome: tuple[str, Any] = ("ok", reply["token"])
        except PoolSaturated as exc:
            outcome = ("saturated", str(exc))
        except BaseException as exc:
            outcome = ("other", repr(exc))
        with lock:
            results.append(outcome)

    threads = run_all([lambda i=i: caller(i) for i in range(callers)])
    # The refused ones come back while the others are still blocked at the gate.
    wait_until(lambda: len(results) == callers - size - max_queue, 10.0, "refusals")
    stats = wait_until(
        lambda: (s := pool.stats())["busy"] == size and s["queued"] == max_queue and s,
        10.0,
        "size running and max_queue waiting",
    )
    assert stats["pool_saturated"] == callers - size - max_queue
    assert all(kind == "saturated" for kind, _ in results)
    assert "max_queue=3" in results[0][1]
    assert len(log.read_text().split()) == size  # exactly `size` are running
    gate.touch()
    for thread in threads:
        thread.join(30.0)
    kinds = [kind for kind, _ in results]
    assert kinds.count("ok") == size + max_queue
    assert kinds.count("saturated") == callers - size - max_queue
    assert len(log.read_text().split()) == size + max_queue
    stats = pool.stats()
    assert stats["requests"] == size + max_queue and stats["queued"] == 0 and stats["errors"] == 0
    # The bridges' own counters: each ran exactly what the pool counted for it. Idle
    # bridges are taken newest first, so one is held busy while the other is asked.
    counted = {b["pid"]: b["requests"] for b in stats["bridges"]}
    assert sum(counted.values()) == size + max_queue
    hold = tmp_path / "hold"
    holder = run_all([lambda: pool.execute("wait_file", {"path": str(hold)})])
    wait_until(lambda: pool.stats()["busy"] == 1, 5.0, "one bridge held")
    other = pool.execute("info")  # +1: the info call itself
    hold.touch()
    holder[0].join(10.0)
    held = pool.execute("info")  # the newest idle one: +2, the hold and this call
    assert {other["pid"], held["pid"]} == pids
    assert other["requests_handled"] == counted[other["pid"]] + 1
    assert held["requests_handled"] == counted[held["pid"]] + 2


def test_queue_timeouts_are_exact_and_never_run_later(make_pool: PoolFactory, tmp_path: Path) -> None:
    pool = make_pool(size=1, max_queue=100, queue_timeout=0.5)
    gate, log = tmp_path / "open", tmp_path / "ran.log"
    outcomes: list[str] = []
    lock = threading.Lock()

    def blocker() -> None:
        pool.execute("wait_file", {"path": str(gate), "token": "blocker", "log": str(log)})

    def queued(i: int) -> None:
        try:
            pool.execute("record", {"log": str(log), "token": f"late{i}"})
            outcome = "ran"
        except QueueTimeout as exc:
            outcome = "timeout" if "queue_timeout" in str(exc) else repr(exc)
        with lock:
            outcomes.append(outcome)

    first = run_all([blocker])
    wait_until(lambda: pool.stats()["busy"] == 1, 5.0, "the blocker runs")
    waiting = run_all([lambda i=i: queued(i) for i in range(31)])
    for thread in waiting:
        thread.join(10.0)
    assert outcomes == ["timeout"] * 31
    assert pool.stats()["queue_timeouts"] == 31 and pool.stats()["queued"] == 0
    gate.touch()
    first[0].join(10.0)
    # The record call runs after anything still queued would have: none was.
    pool.execute("record", {"log": str(log), "token": "last"})
    assert log.read_text().split() == ["blocker", "last"]
    info = pool.execute("info")
    assert info["requests_handled"] == 3  # blocker, last, and this info
    assert pool.stats()["requests"] == 3


def test_waiters_are_served_first_come_first_served(make_pool: PoolFactory, tmp_path: Path) -> None:
    pool = make_pool(size=1, queue_timeout=30.0)
    gate, log = tmp_path / "open", tmp_path / "ran.log"
    threads = run_all([lambda: pool.execute("wait_file", {"path": str(gate)})])
    wait_until(lambda: pool.stats()["busy"] == 1, 5.0, "the slot is taken")
    for i in range(12):
        threads += run_all([lambda i=i: pool.execute("record", {"log": str(log), "token": str(i)})])
        wait_until(lambda i=i: pool.stats()["queued"] == i + 1, 5.0, f"caller {i} waits")
    gate.touch()
    for thread in threads:
        thread.join(10.0)
    assert log.read_text().split() == [str(i) for i in range(12)]


def test_idle_bridges_are_taken_newest_first(make_pool: PoolFactory, tmp_path: Path) -> None:
    pool = make_pool(size=3)
    gates = [tmp_path / f"gate{i}" for i in range(3)]
    results: list[dict[str, Any]] = []
    threads = run_all(
        [lambda gate=gate: results.append(pool.execute("wait_file", {"path": str(gate)})) for gate in gates]
    )
    wait_until(lambda: pool.stats()["busy"] == 3, 5.0, "all three bridges are busy")
    for i, gate in enumerate(gates):  # free them one by one: the last one freed is the newest idle
        gate.touch()
        wait_until(lambda i=i: len(results) == i + 1, 5.0, f"call {i} returned")
    for thread in threads:
        thread.join(5.0)
    newest = results[-1]["pid"]
    assert len({r["pid"] for r in results}) == 3
    # At low load one warm bridge serves call after call.
    assert {pool.execute("ping")["pid"] for _ in range(5)} == {newest}


def test_session_waiter_does_not_block_others(make_pool: PoolFactory, tmp_path: Path) -> None:
    pool = make_pool(size=2, queue_timeout=30.0)
    gate = tmp_path / "open"
    pool.execute("set_counter", {"value": 1}, session_id="s")
    pinned = pool.sessions()["s"]
    holder = run_all([lambda: pool.execute("wait_file", {"path": str(gate)}, session_id="s")])
    wait_until(lambda: pool.stats()["busy"] == 1, 5.0, "the session's bridge is busy")
    waiter = run_all([lambda: pool.execute("increment_counter", {}, session_id="s")])
    wait_until(lambda: pool.stats()["queued"] == 1, 5.0, "the session call waits for its bridge")
    # A session-less call takes the other, free bridge at once.
    assert pool.execute("info")["pid"] != pinned
    gate.touch()
    for thread in holder + waiter:
        thread.join(10.0)
    assert pool.execute("get_counter", {}, session_id="s")["value"] == 2


def test_every_refused_caller_gets_an_error_of_its_own(make_pool: PoolFactory, tmp_path: Path) -> None:
    pool = make_pool(size=1, queue_timeout=30.0)
    gate = tmp_path / "open"
    errors: list[BaseException] = []

    def call() -> None:
        try:
            pool.execute("wait_file", {"path": str(gate)})
        except PoolClosed as exc:
            errors.append(exc)

    def hold() -> None:
        with contextlib.suppress(SnakepitError):  # its bridge goes with the pool
            pool.execute("wait_file", {"path": str(gate)})

    holder = run_all([hold])
    wait_until(lambda: pool.stats()["busy"] == 1, 5.0, "the slot is taken")
    waiters = run_all([call, call, call])
    wait_until(lambda: pool.stats()["queued"] == 3, 5.0, "three callers wait")
    pool.close(1.0)  # wakes the waiters with PoolClosed
    gate.touch()
    for thread in holder + waiters:
        thread.join(10.0)
    for _ in range(3):  # refused at once: the pool is closed
        call()
    assert len(errors) == 6 and all("closed" in str(e) for e in errors)
    # One shared instance raised in many threads would grow one traceback and keep
    # the last raiser's context.
    assert len({id(e) for e in errors}) == 6
    depths = {len(traceback.extract_tb(e.__traceback__)) for e in errors[3:]}
    assert len(depths) == 1

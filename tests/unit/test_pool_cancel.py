"""A stream closed before its end: the bridge goes back only once its command has stopped.

Real bridges: ``ping_stream`` stops at the cancel (a cooperative generator);
``stubborn_stream`` (tests/handlers.py) sleeps 60 s in one step and ignores it,
so its bridge must be killed and replaced after ``cancel_grace``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from snakepit_celery.errors import CommandCancelled, ConfigurationError
from tests.handlers import PoolFactory, Recorder, pid_alive, pool_config, wait_until

#: The issue's bound for the caller: closing a stream must not wait for the bridge.
CLOSE_BOUND = 0.2


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    factory = PoolFactory()
    yield factory
    factory.close()


def only_pid(pool: Any) -> int:
    (bridge,) = pool.stats()["bridges"]
    return int(bridge["pid"])


def full(pool: Any) -> bool:
    stats = pool.stats()
    return bool(stats["workers"] == stats["size"] and stats["available"] == stats["size"])


def streams_cancelled(pool: Any) -> int:
    return int(pool.execute("info")["streams_cancelled"])


def timed_close(stream: Any) -> float:
    started = time.monotonic()
    stream.close()
    return time.monotonic() - started


def settle_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("snakepit-settle-")]


def test_cancel_grace_is_validated() -> None:
    assert pool_config().cancel_grace == 2.0
    with pytest.raises(ConfigurationError, match="cancel_grace"):
        pool_config(cancel_grace=-1)


def test_a_cooperative_generator_keeps_its_bridge(make_pool: PoolFactory) -> None:
    # A long grace: the slot must come back because the bridge said so, not because time passed.
    pool = make_pool(size=1, cancel_grace=30.0)
    pid = only_pid(pool)
    before = streams_cancelled(pool)
    stream = pool.stream("ping_stream", {"count": 0, "interval": 0.05})
    assert next(stream)[0]["seq"] == 0
    assert timed_close(stream) < CLOSE_BOUND
    wait_until(lambda: full(pool), 5.0, "the slot is available again")
    assert only_pid(pool) == pid
    assert streams_cancelled(pool) == before + 1, "the generator's cleanup did not run"
    stats = pool.stats()
    assert stats["restarts"] == 0 and stats["errors"] == 0
    assert pool.execute("ping")["pid"] == pid


def test_cancel_then_iterate_raises_and_keeps_the_bridge(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1, cancel_grace=30.0)
    pid = only_pid(pool)
    with pool.stream("ping_stream", {"count": 0, "interval": 0.05}) as stream:
        next(stream)
        stream.cancel()
        with pytest.raises(CommandCancelled):
            while True:
                next(stream)
    wait_until(lambda: full(pool), 5.0, "the slot is available again")
    assert only_pid(pool) == pid and pool.stats()["restarts"] == 0


def test_a_generator_that_ignores_cancel_gets_its_bridge_replaced(make_pool: PoolFactory) -> None:
    recorder = Recorder()
    grace = 1.0
    pool = make_pool(size=1, cancel_grace=grace, telemetry=recorder)
    stream = pool.stream("stubborn_stream")
    (first,) = next(stream)
    old = first["pid"]
    assert old == only_pid(pool)
    closed_at = time.monotonic()
    assert timed_close(stream) < CLOSE_BOUND
    # The slot stays borrowed while the command still runs: nobody may share that bridge.
    stats = pool.stats()
    assert stats["available"] == 0 and stats["busy"] == 1
    result: dict[str, Any] = {}
    caller = threading.Thread(target=lambda: result.update(pool.execute("ping")))
    caller.start()

    wait_until(lambda: full(pool) and only_pid(pool) != old, grace + 10.0, "the bridge was replaced")
    assert time.monotonic() - closed_at >= grace, "killed before cancel_grace was over"
    caller.join(10.0)
    assert result["pid"] not in (old, None), "a call ran beside the command that ignored the cancel"
    wait_until(lambda: not pid_alive(old), 5.0, "the stubborn bridge is gone")
    assert pool.stats()["restarts"] == 1
    (exited,) = recorder.named("bridge_exited")
    assert exited["pid"] == old and exited["reason"].startswith("ignored cancel"), exited
    outcomes = [e["outcome"] for e in recorder.named("request_finished") if e["command"] == "stubborn_stream"]
    assert outcomes == ["cancelled"]


def test_drain_waits_for_a_cancelled_stream_to_settle(make_pool: PoolFactory) -> None:
    pool = make_pool(size=2, cancel_grace=0.5)
    stream = pool.stream("stubborn_stream")
    (first,) = next(stream)
    stream.close()
    assert pool.stats()["busy"] == 1
    assert pool.drain(10.0) is True
    # drain returned only once the slot was settled: here, by killing the stubborn bridge.
    assert pool.stats()["restarts"] == 1, "drain returned while the stubborn command still ran"
    wait_until(lambda: not pid_alive(first["pid"]), 5.0, "the stubborn bridge is gone")


def test_close_during_settling_ends_everything(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1, cancel_grace=30.0)
    stream = pool.stream("stubborn_stream")
    (first,) = next(stream)
    stream.close()
    assert settle_threads(), "no settle thread runs"
    started = time.monotonic()
    pool.close(1.0)
    assert time.monotonic() - started < 10.0, "close waited for the cancel grace"
    assert not settle_threads()
    wait_until(lambda: not pid_alive(first["pid"]), 5.0, "the stubborn bridge is gone")

"""The whole path, caller -> broker -> worker -> bridge -> result, with a Redis and a RabbitMQ broker.

One worker per broker serves the whole module (no test here kills it). It hosts
three pools: ``python`` (the default), ``tiny`` (one bridge, one waiting call at
most: PoolSaturated) and ``impatient`` (one bridge, 0.3 s queue timeout:
QueueTimeout).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from celery import chain, chord, group
from celery.exceptions import ChordError
from itworkers import Worker, WorkerFactory

from snakepit_celery import (
    CommandError,
    CommandTimeout,
    InvalidArguments,
    PoolSaturated,
    QueueTimeout,
    UnknownCommand,
    get_stats,
)

POOLS = {
    "python": {"size": 2},
    "tiny": {"size": 1, "max_queue": 1},
    "impatient": {"size": 1, "queue_timeout": 0.3},
}


@pytest.fixture(scope="module", params=["redis", "amqp"])
def worker(request: pytest.FixtureRequest, module_worker_factory: WorkerFactory) -> Worker:
    return module_worker_factory(POOLS, broker=request.param, args=("--concurrency", "8"))


def test_compute_returns_the_bridge_result(worker: Worker) -> None:
    result = worker.execute.delay("compute", {"operation": "add", "a": 5, "b": 3}).get(timeout=10)
    assert result["result"] == 8


def test_types_and_bytes_round_trip_exactly(worker: Worker) -> None:
    sent = {"i": 1, "f": 1.5, "t": True, "n": None, "s": "é✓", "l": [1, "a", None], "b": b"\x00\xff\x10"}
    echoed = worker.execute.delay("echo", sent).get(timeout=10)["echoed"]
    assert echoed == sent
    assert {k: type(v) for k, v in echoed.items()} == {k: type(v) for k, v in sent.items()}


def test_apply_async_with_a_named_pool(worker: Worker) -> None:
    pong = worker.execute.apply_async(("ping", {}), kwargs={"pool": "tiny"}).get(timeout=10)
    assert pong["pid"] in [b["pid"] for b in worker.stats()["pools"]["tiny"]["bridges"]]


def test_group_and_chain(worker: Worker) -> None:
    ex = worker.execute
    squares = group(ex.s("compute", {"operation": "power", "a": i, "b": 2}) for i in range(10))()
    assert [r["result"] for r in squares.get(timeout=20)] == [i * i for i in range(10)]
    last = chain(ex.si("ping", {}), ex.si("compute", {"operation": "sqrt", "a": 81}))()
    assert last.get(timeout=20)["result"] == 9


def test_chord_of_100_headers_sums_right(worker: Worker) -> None:
    header = [worker.execute.s("compute", {"operation": "add", "a": i, "b": i}) for i in range(100)]
    result = chord(header)(worker.app.tasks["itest.total"].s())
    assert result.get(timeout=60) == 2 * sum(range(100))


def test_chord_with_a_failing_header_fails_with_that_error(worker: Worker) -> None:
    header = [worker.execute.s("compute", {"operation": "divide", "a": i, "b": i % 7}) for i in range(1, 20)]
    result = chord(header)(worker.app.tasks["itest.total"].s())
    # The chord's result re-raises the header's error: the very class the worker raised.
    with pytest.raises(CommandError) as excinfo:
        result.get(timeout=30)
    assert excinfo.value.remote_type == "ZeroDivisionError"
    # The callback itself never ran: it failed with Celery's ChordError naming that error.
    with pytest.raises(ChordError, match="ZeroDivisionError"):
        result.get(timeout=30, propagate=True, disable_sync_subtasks=False, follow_parents=False)


def test_command_error_carries_remote_type_and_traceback(worker: Worker) -> None:
    with pytest.raises(CommandError) as excinfo:
        worker.execute.delay("compute", {"operation": "divide", "a": 1, "b": 0}).get(timeout=10)
    err = excinfo.value
    assert err.remote_type == "ZeroDivisionError"
    assert "Traceback" in err.remote_traceback and "ZeroDivisionError" in err.remote_traceback
    assert err.retryable is False


def test_unknown_command_and_invalid_arguments(worker: Worker) -> None:
    with pytest.raises(UnknownCommand, match="compute"):
        worker.execute.delay("no_such_command", {}).get(timeout=10)
    with pytest.raises(InvalidArguments, match="operation"):
        worker.execute.delay("compute", {"operation": "modulo", "a": 1, "b": 2}).get(timeout=10)


def test_command_timeout_replaces_the_bridge(worker: Worker) -> None:
    with pytest.raises(CommandTimeout):
        worker.execute.delay("sleep", {"seconds": 30}, timeout=0.5).get(timeout=20)
    worker.wait_for(lambda s: s["pools"]["python"]["workers"] == 2)
    assert worker.execute.delay("ping", {}).get(timeout=10)["status"] == "ok"


def _outcomes(results: list[Any]) -> list[str]:
    outcomes = []
    for result in results:
        try:
            result.get(timeout=30)
            outcomes.append("ok")
        except Exception as exc:
            outcomes.append(type(exc).__name__)
    return sorted(outcomes)


def test_pool_saturated_is_immediate_and_exact(worker: Worker) -> None:
    # One bridge, at most one waiting call: the third concurrent call is refused at once.
    sent = [worker.execute.delay("sleep", {"seconds": 1.5}, pool="tiny")]
    worker.wait_for(lambda s: s["pools"]["tiny"]["busy"] == 1)
    sent.append(worker.execute.delay("sleep", {"seconds": 0.1}, pool="tiny"))
    worker.wait_for(lambda s: s["pools"]["tiny"]["queued"] == 1)
    refused = worker.execute.delay("ping", {}, pool="tiny")
    with pytest.raises(PoolSaturated) as excinfo:
        refused.get(timeout=5)
    assert excinfo.value.retryable is True
    assert _outcomes(sent) == ["ok", "ok"]


def test_queue_timeout(worker: Worker) -> None:
    busy = worker.execute.delay("sleep", {"seconds": 1.5}, pool="impatient")
    worker.wait_for(lambda s: s["pools"]["impatient"]["busy"] == 1)
    with pytest.raises(QueueTimeout):
        worker.execute.delay("ping", {}, pool="impatient").get(timeout=10)
    assert busy.get(timeout=10)["cancelled"] is False


def test_inspect_stats_shows_the_pools(worker: Worker) -> None:
    stats = worker.app.control.inspect(destination=[worker.hostname], timeout=5).stats()
    snakepit = stats[worker.hostname]["snakepit"]
    assert set(snakepit["pools"]) == set(POOLS)
    assert snakepit["pools"]["python"]["size"] == 2


def test_get_stats_sums_over_workers(worker: Worker) -> None:
    stats = get_stats(worker.app, timeout=2)
    assert list(stats["nodes"]) == [worker.hostname]
    assert stats["workers"] == 4  # alive bridges of the three pools


def test_a_killed_bridge_is_replaced_and_idempotent_calls_survive(worker: Worker) -> None:
    victim = worker.stats()["pools"]["python"]["bridges"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    for _ in range(4):  # some of these may reach the dead bridge: each is rerun on a fresh one
        assert worker.execute.delay("ping", {}, idempotent=True).get(timeout=20)["status"] == "ok"
    stats = worker.wait_for(
        lambda s: (
            s["pools"]["python"]["workers"] == 2
            and victim not in [b["pid"] for b in s["pools"]["python"]["bridges"]]
        )
    )
    assert stats["pools"]["python"]["restarts"] >= 1

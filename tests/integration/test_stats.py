"""get_stats() against real workers: every number is what the test did, exactly.

The ``gate`` pool has one bridge of the test handler, one waiting call at most
and a 5 s queue timeout, so a call held at a file gate makes the next call
wait (and time out) and the one after that refused (saturated), all through
Celery tasks on a real worker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from celery.result import AsyncResult
from itworkers import Worker, WorkerFactory

from snakepit_celery import (
    BridgeCrashed,
    CommandError,
    CommandTimeout,
    PoolSaturated,
    QueueTimeout,
    UnknownCommand,
)
from snakepit_celery.cli import format_status
from snakepit_celery.observability.stats import get_stats

REPO = Path(__file__).resolve().parents[2]
GATE = {"size": 1, "max_queue": 1, "queue_timeout": 5.0, "handler": "tests.handlers:TestHandler"}
#: The bridges import tests.handlers from the repository.
ENV = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}


def _run(worker: Worker, command: str, args: Any = None, **kwargs: Any) -> AsyncResult:
    return worker.execute.apply_async((command, args or {}), kwargs={"pool": "gate", **kwargs})


def _gate_stats(worker: Worker) -> dict[str, Any]:
    return dict(worker.stats()["pools"]["gate"])


def test_get_stats_agrees_exactly_with_what_was_done(worker_factory: WorkerFactory, tmp_path: Path) -> None:
    worker = worker_factory({"gate": GATE}, name="gate", env=ENV, args=("--concurrency", "6"))
    other = worker_factory(
        {"other": {"size": 2}}, name="other", broker=worker.broker, prefix=worker.prefix, env=ENV
    )

    for _ in range(3):
        assert _run(worker, "ping").get(timeout=10)["status"] == "ok"
    with pytest.raises(CommandError):
        _run(worker, "compute", {"operation": "divide", "a": 1, "b": 0}).get(timeout=10)
    with pytest.raises(UnknownCommand):
        _run(worker, "no_such_command").get(timeout=10)
    with pytest.raises(CommandTimeout):
        _run(worker, "hang", {"seconds": 60}, timeout=0.5).get(timeout=20)
    worker.wait_for(lambda s: s["pools"]["gate"]["restarts"] == 1 and s["workers"] == 1)
    with pytest.raises(BridgeCrashed):
        _run(worker, "crash").get(timeout=20)
    worker.wait_for(lambda s: s["pools"]["gate"]["restarts"] == 2 and s["workers"] == 1)

    # Hold the only bridge at a gate; one call waits (and times out), one more is refused.
    gate = tmp_path / "open"
    held = _run(worker, "wait_file", {"path": str(gate)})
    worker.wait_for(lambda s: s["pools"]["gate"]["busy"] == 1)
    waiting = _run(worker, "ping")
    worker.wait_for(lambda s: s["pools"]["gate"]["queued"] == 1)
    during = get_stats(worker.app, destination=[worker.hostname, other.hostname], timeout=5)
    assert during["busy"] == 1 and during["queued"] == 1 and during["available"] == 2  # other's two
    with pytest.raises(PoolSaturated):
        _run(worker, "ping").get(timeout=10)
    with pytest.raises(QueueTimeout):
        waiting.get(timeout=10)
    gate.touch()
    assert held.get(timeout=10)["released"] is True
    assert other.execute.apply_async(("ping", {}), kwargs={"pool": "other"}).get(timeout=10)["status"] == "ok"
    worker.wait_for(lambda s: s["busy"] == 0)

    stats = get_stats(worker.app, destination=[worker.hostname, other.hostname], timeout=10)
    assert sorted(stats["nodes"]) == sorted([worker.hostname, other.hostname])
    # requests: 3 pings, divide, unknown, hang, crash, the held call (gate) + 1 ping (other)
    # errors: divide, unknown, hang, crash failed on a bridge; one queue timeout; one refusal
    expected = {
        "workers": 3,
        "available": 3,
        "busy": 0,
        "queued": 0,
        "requests": 9,
        "errors": 6,
        "queue_timeouts": 1,
        "pool_saturated": 1,
        "restarts": 2,
        "sessions": 0,
    }
    assert {key: stats[key] for key in expected} == expected
    gate_pool = stats["nodes"][worker.hostname]["pools"]["gate"]
    assert gate_pool["requests"] == 8 and gate_pool["errors"] == 6 and gate_pool["bridge_errors"] == 4
    assert (
        gate_pool["queue_timeouts"] == 1 and gate_pool["pool_saturated"] == 1 and gate_pool["restarts"] == 2
    )
    pid = _run(worker, "info").get(timeout=10)["pid"]
    assert gate_pool["bridge_pids"] == [pid] == stats["nodes"][worker.hostname]["bridge_pids"]
    assert gate_pool["rss_bytes"] > 1_000_000 and stats["rss_bytes"] > gate_pool["rss_bytes"]
    assert stats["pools"]["other"] == {**stats["pools"]["other"], "nodes": [other.hostname], "requests": 1}
    assert stats["nodes"][other.hostname]["errors"] == 0

    # `snakepit-celery status` prints these very figures, one row per pool.
    header, *rows = format_status(stats).splitlines()
    gate_row = dict(
        zip(header.split(), next(r for r in rows if r.startswith(worker.hostname)).split(), strict=True)
    )
    assert gate_row["POOL"] == "gate" and gate_row["PIDS"] == str(pid)
    assert (gate_row["REQUESTS"], gate_row["ERRORS"], gate_row["TIMEOUTS"]) == ("8", "6", "1")
    assert (gate_row["SATURATED"], gate_row["RESTARTS"], gate_row["SESSIONS"]) == ("1", "2", "0")


def test_stats_of_a_worker_that_is_gone_are_not_counted(worker_factory: WorkerFactory) -> None:
    first = worker_factory({"python": {"size": 1}}, name="first")
    second = worker_factory({"python": {"size": 2}}, name="second", broker=first.broker, prefix=first.prefix)
    both = [first.hostname, second.hostname]
    assert get_stats(first.app, destination=both, timeout=10)["workers"] == 3
    second.process.stop()
    stats = get_stats(first.app, timeout=3)  # no destination: whoever answers
    assert list(stats["nodes"]) == [first.hostname] and stats["workers"] == 1 and stats["sessions"] == 0

    # Sessions pinned to the bridge are counted per pool, per worker and in total.
    in_session = first.app.tasks["snakepit.execute_in_session"]
    for sid in ("stats-a", "stats-b"):
        assert in_session.delay(sid, "set_counter", {"value": 1}).get(timeout=20)
    stats = get_stats(first.app, destination=[first.hostname], timeout=10)
    assert stats["sessions"] == 2 == stats["nodes"][first.hostname]["pools"]["python"]["sessions"]

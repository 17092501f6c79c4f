"""``batch_map`` across two real workers: both are used, and losing one mid-map loses nothing.

The kill tests gate every item on a file: each item first appends its token
to a log (so the log counts executions), then waits for the gate. Once both
workers have a chunk running (two blocked items each), worker A is killed
with SIGKILL and the gate opened. A's chunks come back to the broker (its
connection dropped on RabbitMQ; put back by the worker that claims A's lapsed
lease on Redis). A map sent ``idempotent=True`` runs the chunk A had begun
again on B: every result arrives exactly once, in input order, and the only
items executed twice are the ones A had in flight, all in one chunk. Without
it, that chunk is answered ``WorkerLost`` and the map fails with it, having
run nothing twice.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.result import AsyncResult
from itworkers import Worker, WorkerFactory, wait_for

from snakepit_celery import WorkerLost, batch_map
from snakepit_celery.batch import pool_capacity
from tests.handlers import pid_alive

REPO = Path(__file__).resolve().parents[2]
ENV = {
    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    "SNAKEPIT_SESSION_LEASE_TTL": "3",
}
GATED = {"python": {"size": 2, "handler": "tests.handlers:TestHandler"}}
#: Redis broker: a lost worker's unacknowledged messages come back after this many seconds.
VISIBILITY = {"visibility_timeout": 12, "unacked_restore_interval": 1, "unacked_restore_throttle": 1}


def release_results(*workers: Worker) -> None:
    """Release AsyncResults Celery keeps pending while the test Redis still runs (see test_batch)."""
    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, AsyncResult):
            for worker in workers:
                if obj.backend is worker.app.backend:
                    worker.app.backend.remove_pending_result(obj)


@pytest.fixture
def pair(request: pytest.FixtureRequest, worker_factory: WorkerFactory) -> Iterator[tuple[Worker, Worker]]:
    """Two workers on one broker, one result backend, the same queues."""
    broker, pools = getattr(request, "param", ("redis", {"python": {"size": 2}}))
    env = {**ENV, "IT_TRANSPORT_OPTIONS": json.dumps(VISIBILITY)}
    a = worker_factory(pools, broker=broker, name="a", args=("--concurrency", "4"), env=env, wait=False)
    env_b = {**env, "IT_BACKEND": a.env["IT_BACKEND"]}  # one result backend: the chord counts in one place
    b = worker_factory(
        pools, broker=a.broker, prefix=a.prefix, name="b", args=("--concurrency", "4"), env=env_b
    )
    a.process.wait_ready(a.app, a.hostname, timeout=60)
    try:
        yield a, b
    finally:
        release_results(a, b)


def requests_of(worker: Worker) -> int:
    return int(worker.stats()["pools"]["python"]["requests"])


def test_10000_items_across_two_workers_use_both_and_keep_order(pair: tuple[Worker, Worker]) -> None:
    a, b = pair
    assert pool_capacity(a.app, "python", refresh=True) == (2, 4)
    before = (requests_of(a), requests_of(b))
    items = [{"operation": "multiply", "a": i, "b": 3} for i in range(10_000)]
    results = batch_map("compute", items, app=a.app).delay().get(timeout=120)
    assert [r["result"] for r in results] == [3 * i for i in range(10_000)]
    ran = (requests_of(a) - before[0], requests_of(b) - before[1])
    assert sum(ran) == 10_000 and min(ran) > 0, ran


def _kill_a_mid_map(a: Worker, b: Worker, tmp_path: Path, *, idempotent: bool) -> tuple[Any, Path]:
    gate, log = tmp_path / "gate", tmp_path / "executions.log"
    log.touch()
    items = [{"path": str(gate), "token": str(i), "log": str(log)} for i in range(400)]
    result = batch_map("wait_file", items, app=a.app, chunk_size=CHUNK, idempotent=idempotent).delay()

    busy = lambda w: w.stats()["pools"]["python"]["busy"] == 2  # noqa: E731
    wait_for(lambda: busy(a) and busy(b), 60, "both workers running a chunk")
    a_bridges = a.bridge_pids()
    a.process.signal(signal.SIGKILL)
    assert a.process.wait(10) is not None
    # A bridge notices its worker's death on its own (a pidfd watch); open the gate
    # only once A's bridges are gone, so that "A's items" means what A had in flight.
    wait_for(lambda: not any(pid_alive(pid) for pid in a_bridges), 15, "A's bridges to end")
    gate.touch()
    return result, log


CHUNK = 50
BROKERS = pytest.mark.parametrize(
    "pair", [("redis", GATED), ("amqp", GATED)], indirect=True, ids=["redis", "amqp"]
)


@BROKERS
def test_a_worker_killed_mid_idempotent_map_loses_no_item_and_repeats_only_its_chunk(
    pair: tuple[Worker, Worker], tmp_path: Path
) -> None:
    a, b = pair
    result, log = _kill_a_mid_map(a, b, tmp_path, idempotent=True)
    results = result.get(timeout=90)
    assert [r["token"] for r in results] == [str(i) for i in range(400)]
    assert all(r["released"] for r in results)
    executions = collections.Counter(log.read_text().split())
    assert set(executions) == {str(i) for i in range(400)}
    repeated = sorted(int(token) for token, count in executions.items() if count > 1)
    # Only what A had in flight ran twice (its two bridges' items), and all of it in one chunk.
    assert 1 <= len(repeated) <= 2, repeated
    assert max(executions.values()) == 2
    assert len({index // CHUNK for index in repeated}) == 1, repeated


@BROKERS
def test_a_worker_killed_mid_map_fails_the_map_with_worker_lost_and_runs_nothing_twice(
    pair: tuple[Worker, Worker], tmp_path: Path
) -> None:
    a, b = pair
    result, log = _kill_a_mid_map(a, b, tmp_path, idempotent=False)
    with pytest.raises(WorkerLost) as caught:
        result.get(timeout=90)
    assert a.hostname in caught.value.worker
    executions = collections.Counter(log.read_text().split())
    assert max(executions.values()) == 1, executions

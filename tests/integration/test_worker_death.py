"""A worker killed with pool calls in flight: every caller gets its answer, no call runs twice.

Two workers serve one pool; every call first appends its token to a log (so
the log counts executions), then waits for a gate file. Once both workers run
two calls each and hold more, worker A is SIGKILLed and the gate opened. The
calls A had not begun run on B, once; the two A was running are answered with
``WorkerLost`` naming A (or, sent ``idempotent=True``, run once more on B).
Everything is answered within the lease TTL plus a few seconds, on both brokers.
"""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celery.exceptions
import pytest
from itworkers import Worker, WorkerFactory, wait_for

from snakepit_celery import WorkerLost
from tests.handlers import pid_alive

REPO = Path(__file__).resolve().parents[2]
LEASE_TTL = 3.0
ENV = {
    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    "SNAKEPIT_SESSION_LEASE_TTL": str(LEASE_TTL),
}
GATED = {"python": {"size": 2, "handler": "tests.handlers:TestHandler"}}
#: The documented bound: the lease TTL, plus a beat to notice, plus the run itself.
BOUND = LEASE_TTL + 5.0


@pytest.fixture(params=["redis", "amqp"])
def pair(request: pytest.FixtureRequest, worker_factory: WorkerFactory) -> Iterator[tuple[Worker, Worker]]:
    """Two workers on one broker and one result backend, serving the same pool queue."""
    a = worker_factory(
        GATED, broker=request.param, name="a", args=("--concurrency", "4"), env=ENV, wait=False
    )
    env_b = {**ENV, "IT_BACKEND": a.env["IT_BACKEND"]}
    b = worker_factory(
        GATED, broker=a.broker, prefix=a.prefix, name="b", args=("--concurrency", "4"), env=env_b
    )
    a.process.wait_ready(a.app, a.hostname, timeout=60)
    yield a, b


def _kill_mid_calls(a: Worker, b: Worker, tmp_path: Path, *, idempotent: bool) -> dict[str, Any]:
    gate, log = tmp_path / "gate", tmp_path / "executions.log"
    log.touch()
    tokens = [str(i) for i in range(12)]
    sent = {
        token: a.execute.delay(
            "wait_file", {"path": str(gate), "token": token, "log": str(log)}, idempotent=idempotent
        )
        for token in tokens
    }
    busy = lambda w: w.stats()["pools"]["python"]["busy"] == 2  # noqa: E731
    wait_for(lambda: busy(a) and busy(b), 60, "both workers running two calls")
    a_bridges = a.bridge_pids()
    a.process.signal(signal.SIGKILL)
    killed = time.monotonic()
    assert a.process.wait(10) is not None
    # Open the gate only once A's bridges are gone, so that A's calls cannot finish there.
    wait_for(lambda: not any(pid_alive(pid) for pid in a_bridges), 15, "A's bridges to end")
    gate.touch()
    answers: dict[str, Any] = {}
    for token, result in sent.items():
        try:
            answers[token] = result.get(timeout=BOUND + 10)
        except WorkerLost as exc:
            answers[token] = exc
        except celery.exceptions.TimeoutError:
            answers[token] = "stranded"
    last = time.monotonic() - killed
    runs = collections.Counter(log.read_text().split())
    lost = sorted(t for t, v in answers.items() if isinstance(v, WorkerLost))
    print(f"\nanswers after {last:.1f}s; WorkerLost: {lost}; runs: {dict(runs)}")
    stranded = [t for t, v in answers.items() if v == "stranded"]
    assert not stranded, f"stranded: {stranded}; B's log:\n{b.process.log()[-6000:]}"
    assert last <= BOUND + 2, f"the last caller waited {last:.1f}s after the kill"
    return {"answers": answers, "runs": runs, "lost": lost}


def test_calls_of_a_killed_worker_run_once_elsewhere_or_answer_worker_lost(
    pair: tuple[Worker, Worker], tmp_path: Path
) -> None:
    a, b = pair
    seen = _kill_mid_calls(a, b, tmp_path, idempotent=False)
    answers, runs, lost = seen["answers"], seen["runs"], seen["lost"]
    assert len(lost) == 2, answers  # the two A was running
    for token in lost:
        assert a.hostname in answers[token].worker and a.hostname in str(answers[token])
        assert answers[token].retryable
    assert all(answers[t]["released"] for t in answers if t not in lost), answers
    assert max(runs.values()) == 1, runs  # nothing ran twice
    assert set(runs) == set(answers), runs  # nothing lost: every call ran (the lost ones on A)


def test_idempotent_calls_of_a_killed_worker_run_again_once(
    pair: tuple[Worker, Worker], tmp_path: Path
) -> None:
    a, b = pair
    seen = _kill_mid_calls(a, b, tmp_path, idempotent=True)
    answers, runs = seen["answers"], seen["runs"]
    assert seen["lost"] == [], answers
    assert all(v["released"] for v in answers.values()), answers
    twice = sorted(t for t, n in runs.items() if n == 2)
    assert len(twice) == 2 and max(runs.values()) == 2, runs  # A's two, once more on B

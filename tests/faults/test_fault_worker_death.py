"""Workers SIGKILLed with calls in flight (issue 14, scenarios a and b).

80 ``sleep(0.25)`` calls go to a pool served by two workers; 1.5 s later one
of them (a) or both, followed by a fresh worker (b), is SIGKILLed. No caller
may be left waiting past the lease TTL + 5 s, no call may run twice, and none
may be lost: a call that had begun on a dead worker answers ``WorkerLost``,
every other one runs (once) on a live worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from itworkers import WorkerFactory
from scenarios import RECOVERY_BOUND, worker_sigkill


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_a_worker_sigkilled_strands_no_caller_and_runs_nothing_twice(
    worker_factory: WorkerFactory, run_log: Path, broker: str
) -> None:
    tally = worker_sigkill(worker_factory, broker, run_log)
    print(tally.describe())
    assert tally.calls == 80
    assert tally.stranded == 0, tally.describe()
    assert tally.duplicated == 0, tally.describe()
    assert tally.facts["wrong"] == [], tally.describe()
    assert tally.facts["started_on_dead"] >= 1  # the kill hit running calls
    assert tally.last_answer is not None and tally.last_answer <= RECOVERY_BOUND, tally.describe()


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_both_workers_sigkilled_then_a_fresh_one_loses_no_call(
    worker_factory: WorkerFactory, run_log: Path, broker: str
) -> None:
    tally = worker_sigkill(worker_factory, broker, run_log, both=True)
    print(tally.describe())
    assert tally.calls == 80
    assert tally.lost == 0, tally.describe()
    assert tally.stranded == 0, tally.describe()
    assert tally.duplicated == 0, tally.describe()
    assert tally.facts["wrong"] == [], tally.describe()
    bound = tally.facts["fresh_worker_start"] + RECOVERY_BOUND
    assert tally.last_answer is not None and tally.last_answer <= bound, tally.describe()

"""A session owner frozen past its lease (issue 14, scenario f).

A session's calls keep coming, one every 0.1 s, while its owner is stopped
(SIGSTOP) until the other worker has taken the session over, then woken
(SIGCONT). Every call runs once, in send order, one at a time: the woken
owner runs none of the calls it had taken before it froze.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from itworkers import WorkerFactory
from scenarios import frozen_owner

#: On RabbitMQ the frozen owner's connection stays open, so the session calls it had
#: prefetched stay unacknowledged to it while the new owner runs the calls sent after
#: them; they come back (and run) only when the woken owner lets them go: out of order.
AMQP_ORDER = pytest.mark.xfail(
    strict=True,
    reason="RabbitMQ: a frozen owner's prefetched session calls run after later ones (run order "
    "0-9 17-24 10-16 ...): the takeover does not wait for the calls the old owner still holds",
)


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["redis", pytest.param("amqp", marks=AMQP_ORDER)])
def test_a_frozen_owner_woken_after_takeover_runs_nothing_twice_or_out_of_order(
    worker_factory: WorkerFactory, run_log: Path, broker: str
) -> None:
    tally = frozen_owner(worker_factory, broker, run_log)
    print(tally.describe())
    facts = tally.facts
    assert facts["took_over_after"] is not None, tally.describe()
    assert tally.stranded == 0, tally.describe()
    assert tally.done == tally.calls, tally.describe()
    assert tally.duplicated == 0, tally.describe()
    assert facts["ran"] == tally.calls
    assert facts["out_of_order"] == 0, tally.describe()
    assert facts["overlaps"] == 0, tally.describe()
    assert len(facts["owner_switches"]) <= 2, tally.describe()  # the first owner's bridge, then the other's

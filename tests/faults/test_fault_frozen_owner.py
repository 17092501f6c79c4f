"""A session owner frozen past its lease (issue 14, scenario f).

A session's calls keep coming, one every 0.1 s, while its owner is stopped
(SIGSTOP) until the other worker has taken the session over, then woken
(SIGCONT). Every call runs once, in send order, one at a time: the woken
owner runs none of the calls it had taken before it froze. On RabbitMQ the calls
it had prefetched come back only when it wakes: the new owner runs no later
call before them (see ``SessionManager._hold_back``).
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest
from itworkers import WorkerFactory, wait_for
from scenarios import LEASE_TTL, Calls, frozen_owner, pair, printing_logs


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["redis", "amqp"])
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


#: How long the new owner waits for a frozen owner's calls in the test below.
ORDER_WAIT = 2.0


@pytest.mark.slow
def test_an_owner_that_stays_frozen_holds_later_calls_no_longer_than_the_order_wait(
    worker_factory: WorkerFactory, run_log: Path
) -> None:
    """RabbitMQ: the frozen owner's prefetched calls come back only when it wakes. The
    new owner runs the calls sent after them once they have waited ``order_wait``
    (answered while the old owner is still frozen), and the held ones when they come
    back: each call once, none lost."""
    import redis

    from snakepit_celery.sessions.lease import LeaseTable

    a, b = pair(worker_factory, "amqp", env={"SNAKEPIT_SESSION_ORDER_WAIT": str(ORDER_WAIT)})
    calls = Calls(a.app, run_log)
    sid = f"stays-frozen-{uuid.uuid4().hex[:8]}"
    sessions = redis.Redis.from_url(a.env["IT_BACKEND"])
    leases = LeaseTable(sessions, a.prefix)
    try:
        with printing_logs([a, b]):
            calls.session_sleep(sid, 0.05).result.get(timeout=30)
            owner_id = leases.route_of(sid).get("owner", "")
            owner, other = (a, b) if owner_id.startswith(a.hostname + "#") else (b, a)
            owner.process.signal(signal.SIGSTOP)
            frozen_at = time.monotonic()
            try:
                # More than the frozen owner can prefetch (concurrency 2 x prefetch multiplier 4).
                held = [calls.session_sleep(sid, 0.05) for _ in range(20)]
                wait_for(
                    lambda: leases.route_of(sid).get("owner", "").startswith(other.hostname + "#"),
                    LEASE_TTL * 4 + 10,
                    "the other worker to take the session over",
                )
                later = [calls.session_sleep(sid, 0.05) for _ in range(3)]
                bound = ORDER_WAIT + 10
                wait_for(
                    lambda: all(c.result.ready() for c in later), bound, "the later calls, owner still frozen"
                )
                assert owner.process.alive()  # still there, still frozen
            finally:
                owner.process.signal(signal.SIGCONT)
            calls.collect(until=time.monotonic() + 30)
            tally = calls.tally("session owner that stays frozen (amqp)", frozen_at, 60)
            print(tally.describe(), "held:", [c.outcome for c in held])
            assert tally.stranded == 0 and tally.duplicated == 0, tally.describe()
            assert tally.done == tally.calls, tally.describe()
    finally:
        calls.close()
        sessions.close()

"""The call ledger's verdicts, on a real Redis: what a worker may do with a call it received.

Two ledgers stand for two workers of one prefix; leases are written as the
session lease table writes them (``<p>:workers``), so "dead" means a lapsed
lease, as in a worker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from snakepit_celery.recovery import CallLedger
from snakepit_celery.recovery.ledger import FINISHED_TTL

P = "led"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def ledger(client: redis.Redis, worker: str, max_deliveries: int = 3) -> CallLedger:
    client.zadd(f"{P}:workers", {worker: (time.time() + 60) * 1000})  # a live lease
    return CallLedger(client, P, worker, max_deliveries=max_deliveries)


def die(client: redis.Redis, worker: str) -> None:
    client.zadd(f"{P}:workers", {worker: 0})


def test_a_call_that_never_began_runs_once_then_is_mine(client: redis.Redis) -> None:
    a = ledger(client, "a")
    a.received("t1", f"{P}.pool.python", "tag1")
    assert a.begin("t1", "tag1", idempotent=False) == ("ok", "")
    assert a.begin("t1", "tag1", idempotent=False) == ("mine", "a")  # a duplicate delivery
    assert client.hget(f"{P}:taken:a", "t1") == b"tag1"


def test_a_call_begun_on_a_dead_worker_is_lost_unless_idempotent_and_then_only_once(
    client: redis.Redis,
) -> None:
    a, b, c = ledger(client, "a"), ledger(client, "b"), ledger(client, "c")
    assert a.begin("t1", "x", idempotent=False)[0] == "ok"
    assert a.begin("t2", "y", idempotent=True)[0] == "ok"
    die(client, "a")
    assert sorted(b.recover("a")) == ["x", "y"]
    assert b.begin("t1", "x", idempotent=False) == ("lost", "a")
    assert b.begin("t2", "y", idempotent=True) == ("rerun", "a")
    die(client, "b")
    c.recover("b")
    assert c.begin("t2", "y", idempotent=True) == ("lost", "b")  # rerun once, never twice


def test_a_call_taken_by_max_deliveries_dead_workers_is_refused(client: redis.Redis) -> None:
    for n in range(3):
        holder = ledger(client, f"w{n}")
        holder.received("t1", f"{P}.pool.python", f"tag{n}")
        holder.flush()  # recorded, never begun
        die(client, f"w{n}")
        ledger(client, "claimer").recover(f"w{n}")
    assert ledger(client, "last").begin("t1", "tag9", idempotent=False) == ("poison", "3")


def test_a_stalled_worker_leaves_the_messages_put_back_for_others(client: redis.Redis) -> None:
    a, b = ledger(client, "a"), ledger(client, "b")
    a.received("t1", f"{P}.pool.python", "tag1")
    a.flush()
    die(client, "a")
    assert b.recover("a") == ["tag1"]
    # The copy put back keeps its tag: the survivor runs it, the stalled holder does not.
    assert b.begin("t1", "tag1", idempotent=False)[0] == "ok"
    assert a.begin("t1", "tag1", idempotent=False) == ("stale", "")


def test_messages_from_other_queues_are_not_recorded(client: redis.Redis) -> None:
    a = ledger(client, "a")
    a.received("t1", f"{P}.session.s1", "tag1")
    assert a.holds("t1") is None
    a.received("t2", f"{P}.pool.python", "")
    assert a.holds("t2") == ""


def test_the_end_of_a_call_is_written_behind_and_its_record_expires_soon(client: redis.Redis) -> None:
    a = ledger(client, "a")
    a.received("t1", f"{P}.pool.python", "tag1")
    assert a.begin("t1", "tag1", idempotent=False)[0] == "ok"
    a.finished("t1")
    a.flush()
    assert not client.hexists(f"{P}:taken:a", "t1")
    assert 0 < client.ttl(f"{P}:call:t1") <= FINISHED_TTL


def test_unrecorded_old_messages_are_put_back_only_when_no_live_worker_holds_them(
    client: redis.Redis,
) -> None:
    a = ledger(client, "a")
    a.received("held", f"{P}.pool.python", "tag-held")
    a.flush()
    assert a.unheld([("held", "tag-held"), ("nobody", "tag-nobody")]) == ["tag-nobody"]
    assert client.hget(f"{P}:call:nobody", "deaths") == b"1"


def test_stop_forgets_what_the_worker_held(client: redis.Redis) -> None:
    a = ledger(client, "a")
    a.start()
    a.received("t1", f"{P}.pool.python", "tag1")
    a.stop()
    assert not client.exists(f"{P}:taken:a")
    assert a.holds("t1") is None


def test_a_copy_redelivered_to_its_holder_stays_held_until_the_last_copy_ends(
    client: redis.Redis,
) -> None:
    a = ledger(client, "a")
    a.received("t1", f"{P}.pool.python", "")
    assert a.begin("t1", "", idempotent=False)[0] == "ok"
    a.received("t1", f"{P}.pool.python", "")  # RabbitMQ: the same message again, after a reconnection
    a.finished("t1")  # the first copy ran
    assert a.holds("t1") == ""  # so the second is still checked: it must not run again
    assert a.begin("t1", "", idempotent=False) == ("mine", "a")
    a.finished("t1")
    assert a.holds("t1") is None


def test_a_first_delivery_sends_its_record_before_the_call_and_reads_the_verdict_after(
    client: redis.Redis,
) -> None:
    a = ledger(client, "a")
    a.received("t1", f"{P}.pool.python", "tag1")
    assert a.begin_behind("t1", "tag1", idempotent=False) is None  # no lease renewed yet: not sure
    a.lease_renewed(time.monotonic(), 60)
    verdict = a.begin_behind("t1", "tag1", idempotent=False)
    assert verdict is not None
    # Nothing waited for the answer, yet the record is there (Redis ran the command).
    deadline = time.monotonic() + 5
    while client.hget(f"{P}:call:t1", "run") != b"a" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.hget(f"{P}:call:t1", "run") == b"a"
    assert verdict() == ("ok", "")
    # The connection went back to the pool with nothing left unread on it.
    assert client.ping() and a.begin("t1", "tag1", idempotent=False) == ("mine", "a")


def _calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_first_delivery_sends_the_script_digest_and_survives_a_script_flush(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    a = ledger(client, "a")
    a.lease_renewed(time.monotonic(), 60)
    a.received("t1", f"{P}.pool.python", "tag1")
    first = a.begin_behind("t1", "tag1", idempotent=False)
    assert first is not None and first() == ("ok", "")
    evals, digests = _calls(client, "eval"), _calls(client, "evalsha")
    # An operator flushes the scripts: the next record fails as NOSCRIPT on the
    # connection that had loaded it, and is written at once, synchronously.
    client.script_flush()
    a.received("t2", f"{P}.pool.python", "tag2")
    second = a.begin_behind("t2", "tag2", idempotent=False)
    assert second is not None and second() == ("ok", "")
    assert client.hget(f"{P}:call:t2", "run") == b"a"
    assert "flushed" in caplog.text
    # The connection loads the script again as it reconnects; later records use the digest.
    a.received("t3", f"{P}.pool.python", "tag3")
    third = a.begin_behind("t3", "tag3", idempotent=False)
    assert third is not None and third() == ("ok", "")
    assert client.hget(f"{P}:call:t3", "run") == b"a"
    assert _calls(client, "eval") == evals  # the script's text was never sent
    assert _calls(client, "evalsha") > digests
    a.stop()


def test_a_lapsing_lease_or_a_declared_death_makes_the_call_wait_for_its_verdict(
    client: redis.Redis,
) -> None:
    a = ledger(client, "a")
    a.lease_renewed(time.monotonic() - 31, 60)  # renewed longer than half a lease ago
    a.received("t1", f"{P}.pool.python", "tag1")
    assert not a.lease_sure()
    assert a.begin_behind("t1", "tag1", idempotent=False) is None
    a.lease_renewed(time.monotonic(), 60)
    a.declared_dead()  # it stalled; what it held may run elsewhere now
    a.lease_renewed(time.monotonic(), 60)  # and registered again
    a.received("t2", f"{P}.pool.python", "tag2")
    assert a.begin_behind("t1", "tag1", idempotent=False) is None
    verdict = a.begin_behind("t2", "tag2", idempotent=False)  # received after: a first delivery
    assert verdict is not None and verdict() == ("ok", "")

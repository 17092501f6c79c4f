"""Session ownership, routing, ordering and broker operations against a real (private) Redis."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from snakepit_celery.errors import InvalidArguments, InvalidSessionId
from snakepit_celery.sessions.lease import BATCH, LeaseTable
from snakepit_celery.sessions.ordering import SessionLines
from snakepit_celery.sessions.routing import parse_call

P = "lt"


@pytest.fixture
def table(redis_url: str) -> LeaseTable:
    return LeaseTable(redis.Redis.from_url(redis_url), P)


def register(table: LeaseTable, worker: str, pools: list[str] | None = None, lease_ms: int = 60_000) -> None:
    assert table.heartbeat(worker, pools or ["python"], lease_ms, first=True)


def wakes(table: LeaseTable, worker: str) -> list[str]:
    return [w.decode() for w in table.redis.lrange(table.key("wake", worker), 0, -1)]


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def test_new_session_binds_to_a_live_worker_and_wakes_it(table: LeaseTable) -> None:
    register(table, "w1")
    route = table.route("s1", None, "python")
    assert (route.status, route.owner, route.pool) == ("bound", "w1", "python")
    assert wakes(table, "w1") == ["bind s1"]
    assert table.owned("w1") == {"s1"}
    # Not consuming yet: the next call wakes the owner again.
    assert table.route("s1", None, "python").status == "woken"
    assert table.set_active(["s1", "s2"], "w1", True) == ["python", None]
    again = table.route("s1", "python", "python")
    assert (again.status, again.owner) == ("active", "w1")


def test_sessions_spread_over_live_workers_of_their_pool(table: LeaseTable) -> None:
    register(table, "w1")
    register(table, "w2")
    register(table, "n1", ["node"])
    owners = [table.route(f"s{i}", None, "python").owner for i in range(10)]
    assert owners.count("w1") == 5 and owners.count("w2") == 5
    assert table.route("js", "node", "python").owner == "n1"


def test_a_bound_session_keeps_its_pool(table: LeaseTable) -> None:
    register(table, "w1")
    register(table, "n1", ["node"])
    table.route("s1", "node", "python")
    assert table.route("s1", "python", "python").status == "pool"
    assert table.route("s1", None, "python").pool == "node"


def test_racing_first_calls_end_with_one_owner(table: LeaseTable) -> None:
    for w in ("w1", "w2", "w3"):
        register(table, w)
    results: list[str] = []
    barrier = threading.Barrier(8)

    def call() -> None:
        barrier.wait()
        results.append(table.route("race", None, "python").owner)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    owner = results[0]
    assert sum(len(table.owned(w)) for w in ("w1", "w2", "w3")) == 1
    assert wakes(table, owner)[0] == "bind race"


def test_without_a_live_worker_a_session_waits_as_an_orphan(table: LeaseTable) -> None:
    assert table.route("s1", None, "python").status == "orphan"
    register(table, "w1")
    assert table.orphans("python") == ["s1"]
    assert table.adopt(["s1"]) == ["w1"]
    assert table.orphans("python") == []
    assert table.route_of("s1")["state"] == "bound"


def test_a_dead_worker_is_claimed_once_and_its_sessions_move(table: LeaseTable) -> None:
    register(table, "dead", lease_ms=150)
    for i in range(4):
        table.route(f"s{i}", None, "python")
    register(table, "w1")
    register(table, "w2")
    assert wait_for(lambda: table.dead_workers() == ["dead"])
    claims: list[list[str] | None] = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        barrier.wait()
        claims.append(table.claim("dead"))

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [c for c in claims if c is not None]
    assert len(won) == 1 and sorted(won[0]) == ["s0", "s1", "s2", "s3"]
    # While in failover a caller's call just waits in the queue.
    assert table.route("s0", None, "python").status == "failover"
    # Other workers leave a fresh failover to its claimer...
    assert table.adopt(["s0"], grace_ms=60_000) == [None]
    # ...which hands the sessions out.
    owners = table.adopt([f"s{i}" for i in range(4)])
    assert sorted(owners) == ["w1", "w1", "w2", "w2"]
    assert not table.redis.exists(table.key("owned", "dead"), table.key("wake", "dead"))
    # The dead one, should it come back, learns it lost everything.
    assert table.heartbeat("dead", ["python"], 60_000) is False


def test_a_takeover_of_more_sessions_than_a_batch_moves_them_all(table: LeaseTable) -> None:
    """Handovers go a batch of sessions per round trip: more than one batch still
    moves every session once, spread over the living, and wakes each new owner."""
    n = 2 * BATCH + 7
    register(table, "dead")
    sids = [f"b{i}" for i in range(n)]
    for sid in sids:
        table.route(sid, None, "python", task_id=f"t-{sid}", call="{}")
    assert table.heartbeat("dead", ["python"], 1)  # its lease lapses now
    register(table, "w1")
    register(table, "w2")
    assert wait_for(lambda: table.dead_workers() == ["dead"])
    claimed = table.claim("dead")
    assert claimed is not None and sorted(claimed) == sorted(sids)
    journals = table.journals([*claimed, "nosuch"])
    assert set(journals) == set(sids)
    assert all(len(j) == 1 and j[0][2] == f"t-{sid}" for sid, j in journals.items())
    owners = table.adopt(claimed)
    assert len(owners) == n and set(owners) == {"w1", "w2"}
    assert abs(owners.count("w1") - owners.count("w2")) <= 1
    assert table.owned("w1") | table.owned("w2") == set(sids)
    # Each owner's wake-ups come a batch at a time, every session once.
    for worker in ("w1", "w2"):
        woken: list[str] = []
        while batch := table.pop_wakes(worker, timeout=0.1):
            assert len(batch) <= BATCH
            woken += [sid for op, sid in batch if op == "adopt"]
        assert sorted(woken) == sorted(table.owned(worker))
    pools = table.set_active(sids, "w1", True)
    assert [p is not None for p in pools] == [sid in table.owned("w1") for sid in sids]


def test_leaving_hands_sessions_over_at_once(table: LeaseTable) -> None:
    register(table, "w1")
    table.route("s1", None, "python")
    register(table, "w2")
    assert table.leave("w1") == ["s1"]
    assert table.route_of("s1")["owner"] == "w2"
    assert "adopt s1" in wakes(table, "w2")


def test_begin_call_checks_the_owner_and_refreshes_the_data(table: LeaseTable) -> None:
    from snakepit_celery.sessions.store import SessionStore

    register(table, "w1")
    table.route("s1", None, "python")
    assert table.begin_call("s1", "w1", time.time())[:2] == ("missing", "python")
    store = SessionStore(table.redis, prefix=P)
    store.create_session("s1", ttl=100)
    table.redis.expire(table.key("session", "s1"), 5)
    assert table.begin_call("s1", "w1", time.time())[:2] == ("ok", "python")
    assert table.redis.ttl(table.key("session", "s1")) > 90
    assert table.begin_call("s1", "w2", time.time())[0] == "notmine"


def test_a_call_does_not_begin_before_one_sent_earlier_that_keeps_its_place(table: LeaseTable) -> None:
    from snakepit_celery.sessions.store import SessionStore

    register(table, "w1")
    SessionStore(table.redis, prefix=P).create_session("s1", ttl=100)
    for tid in ("t1", "t2"):
        table.route("s1", None, "python", task_id=tid, call="{}", ordered=True)
    table.route("s1", None, "python", task_id="eta", call="{}")  # an ETA call keeps no place
    table.route("s1", None, "python", task_id="t3", call="{}", ordered=True)
    wait = 60_000
    assert table.begin_call("s1", "w1", time.time(), "t2", wait) == ("early", "python", "t1")
    assert table.begin_call("s1", "w2", time.time(), "t2", wait)[0] == "notmine"
    assert table.begin_call("s1", "w1", time.time(), "t1", wait) == ("ok", "python", "")
    assert table.begin_call("s1", "w1", time.time(), "t2", wait)[0] == "ok"
    assert table.begin_call("s1", "w1", time.time(), "t3", wait)[0] == "ok"  # the ETA call is not waited for
    # An earlier call dropped (revoked), or sent longer ago than the wait, holds no one up.
    for tid in ("t4", "t5", "t6"):
        table.route("s1", None, "python", task_id=tid, call="{}", ordered=True)
    table.drop_call("s1", "t4")
    assert table.begin_call("s1", "w1", time.time(), "t6", wait) == ("early", "python", "t5")
    assert table.begin_call("s1", "w1", time.time(), "t6", 0)[0] == "ok"
    assert table.redis.zrange(table.key("order", "s1"), 0, -1) == []  # t5 given up on, t6 begun
    assert table.begin_call("s1", "w1", time.time(), "t5", wait)[0] == "ok"  # it still runs when it comes
    assert set(table.redis.hkeys(table.key("calls", "s1"))) == {b"eta"}
    assert table.forget("s1", "w1")
    assert not table.redis.exists(table.key("calls", "s1"), table.key("order", "s1"))


def test_expiry_closes_only_an_expired_quiet_session(table: LeaseTable) -> None:
    from snakepit_celery.sessions.store import SessionStore

    register(table, "w1")
    store = SessionStore(table.redis, prefix=P)
    store.create_session("s1", ttl=100)
    table.route("s1", None, "python")
    assert table.expire_begin("s1", "w1", 0) == "alive"
    store.delete_session("s1")
    assert table.expire_begin("s1", "w1", 60_000) == "recent"
    assert table.expire_begin("s1", "w2", 0) == "notmine"
    assert table.expire_begin("s1", "w1", 0) == "closing"
    assert table.route("s1", None, "python").status == "closing"
    assert table.expire_abort("s1", "w1")
    assert table.route_of("s1")["state"] == "bound"
    assert table.expire_begin("s1", "w1", 0) == "closing"
    assert table.forget("s1", "w1")
    assert table.route_of("s1") == {}
    assert table.owned("w1") == set()
    assert not table.redis.keys(f"{P}:*s1*")


def test_lines_run_calls_in_arrival_order() -> None:
    lines = SessionLines()
    for i in range(20):
        lines.join("s", f"t{i}")
    ran: list[str] = []
    lock = threading.Lock()

    def run(task_id: str) -> None:
        assert lines.wait_turn("s", task_id, timeout=10)
        with lock:
            ran.append(task_id)
        lines.leave("s", task_id)

    threads = [threading.Thread(target=run, args=(f"t{i}",)) for i in reversed(range(20))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ran == [f"t{i}" for i in range(20)]
    assert lines.waiting("s") == 0
    assert lines.wait_turn("s", "never-joined")  # not in a line: no wait


def test_a_revoked_call_leaves_the_line() -> None:
    lines = SessionLines()
    lines.join("s", "a")
    lines.join("s", "b")
    assert not lines.wait_turn("s", "b", timeout=0.05)
    lines.leave("s", "a")  # revoked before it ran
    assert lines.wait_turn("s", "b", timeout=0.05)


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (("", "ping", {}), None, InvalidSessionId),
        (("x" * 129, "ping", {}), None, InvalidSessionId),
        (("a b", "ping", {}), None, InvalidSessionId),
        (("a:b", "ping", {}), None, InvalidSessionId),
        (("a*", "ping", {}), None, InvalidSessionId),
        ((None, "ping", {}), None, InvalidSessionId),
        (("s1",), None, InvalidArguments),
        (("s1", "ping", {}, 4), None, InvalidArguments),
        (("s1", "ping"), {"pool": "bad pool"}, InvalidArguments),
        (("s1", "ping"), {"command": "x"}, InvalidArguments),
    ],
)
def test_bad_calls_are_refused_with_the_reason(args, kwargs, error) -> None:
    with pytest.raises(error) as info:
        parse_call(args, kwargs)
    assert str(info.value)


def test_parse_call_names_everything() -> None:
    sid, named = parse_call(("user_123", "set_counter", {"value": 1}), {"timeout": 5})
    assert sid == "user_123"
    assert named == {"session_id": "user_123", "command": "set_counter", "args": {"value": 1}, "timeout": 5}


# -- broker operations on a Redis broker ----------------------------------------------------

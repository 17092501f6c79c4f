"""Sessions end to end: real workers (subprocesses), real bridges, a Redis and a RabbitMQ broker.

Two workers share one broker and one sessions Redis (the result backend) per
broker kind, for the whole module; the failover tests start their own pair,
since they kill one.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from itworkers import Worker, WorkerFactory, delete_queues, wait_for
from kombu import Connection

from snakepit_celery import InvalidSessionId
from snakepit_celery.errors import SessionError
from snakepit_celery.sessions import SessionStore, create_program, execute_program
from snakepit_celery.sessions.lease import LeaseTable
from snakepit_celery.sessions.routing import session_queue

POOLS = {"python": {"size": 2}, "other": {"size": 1}}
#: Short lease and quick expiry so the tests take seconds (the defaults are 7 s / 1 s).
SESSION_ENV = {
    "SNAKEPIT_SESSION_LEASE_TTL": "3",
    "SNAKEPIT_SESSION_EXPIRY_GRACE": "0.5",
    "SNAKEPIT_SESSION_EXPIRY_INTERVAL": "0.5",
}


class Pair:
    """Two workers of one prefix, broker and sessions Redis, and helpers over them."""

    def __init__(self, factory: WorkerFactory, broker: str, env: dict[str, str] | None = None) -> None:
        env = {**SESSION_ENV, **(env or {})}
        if broker == "redis":
            env.setdefault("SNAKEPIT_SESSION_CONSUMER_IDLE", "1.5")
        self.a = factory(POOLS, broker=broker, name="a", env=env, args=("--concurrency", "6"))
        shared = {**env, "IT_BACKEND": self.a.env["IT_BACKEND"]}
        self.b = factory(
            POOLS,
            broker=self.a.broker,
            name="b",
            prefix=self.a.prefix,
            env=shared,
            args=("--concurrency", "6"),
        )
        self.app = self.a.app
        self.prefix = self.a.prefix
        self.call = self.app.tasks["snakepit.execute_in_session"]
        self.sessions_redis = redis.Redis.from_url(self.a.env["IT_BACKEND"])
        self.leases = LeaseTable(self.sessions_redis, self.prefix)
        self.store = SessionStore(self.sessions_redis, prefix=self.prefix)
        self.used: set[str] = set()

    def sid(self, name: str) -> str:
        sid = f"{name}-{uuid.uuid4().hex[:8]}"
        self.used.add(sid)
        return sid

    def run(self, sid: str, command: str, args: Any = None, **kwargs: Any) -> Any:
        return self.call.apply_async((sid, command, args or {}), kwargs or None).get(timeout=30)

    def owner(self, sid: str) -> Worker:
        owner = self.leases.route_of(sid).get("owner", "")
        for w in (self.a, self.b):
            if owner.startswith(w.hostname + "#"):
                return w
        raise AssertionError(f"session {sid} has no live owner: {self.leases.route_of(sid)}")

    def session_keys(self, sid: str) -> list[bytes]:
        keys = [k for k in self.sessions_redis.keys("*") if sid.encode() in k]
        if self.a.broker.startswith("redis"):
            broker = redis.Redis.from_url(self.a.broker)
            keys += [k for k in broker.keys("*") if sid.encode() in k]
            keys += [b"unacked:" + t for t, v in broker.hgetall("unacked").items() if sid.encode() in v]
        return keys

    def queue_exists(self, sid: str) -> bool:
        with Connection(self.a.broker) as conn:
            channel = conn.channel()
            try:
                session_queue(self.prefix, sid).bind(channel).queue_declare(passive=True)
                return True
            except conn.channel_errors:
                return False
            finally:
                with contextlib.suppress(Exception):  # the broker closed it
                    channel.close()

    def cleanup(self) -> None:
        """Delete the session queues this module made on a shared RabbitMQ (ours only)."""
        if not self.a.broker.startswith("redis"):
            delete_queues(self.a.broker, [session_queue(self.prefix, sid).name for sid in self.used])


@pytest.fixture(scope="module", params=["redis", "amqp"])
def pair(request: pytest.FixtureRequest, module_worker_factory: WorkerFactory) -> Iterator[Pair]:
    pair = Pair(module_worker_factory, request.param)
    try:
        yield pair
    finally:
        pair.cleanup()


def test_200_calls_reach_one_bridge_and_share_its_state(pair: Pair) -> None:
    sid = pair.sid("user")
    assert pair.run(sid, "set_counter", {"value": 0}) == {"value": 0}
    # Sent back to back, without waiting: they still run one at a time, in order.
    sent = [pair.call.delay(sid, "increment_counter", {}) for _ in range(200)]
    infos = [pair.call.delay(sid, "info", {}) for _ in range(5)]
    assert [r.get(timeout=60)["value"] for r in sent] == list(range(1, 201))
    reports = [r.get(timeout=30) for r in infos]
    assert {r["pid"] for r in reports} == {reports[0]["pid"]}
    assert {r["session_id"] for r in reports} == {sid}
    owner = pair.owner(sid)
    assert reports[0]["pid"] in owner.bridge_pids()
    assert pair.run(sid, "get_counter") == {"value": 200}


def test_sessions_spread_over_workers_and_bridges(pair: Pair) -> None:
    sids = [pair.sid("spread") for _ in range(8)]
    pids = {sid: pair.run(sid, "info")["pid"] for sid in sids}
    owners = {sid: pair.owner(sid).hostname for sid in sids}
    assert set(owners.values()) == {pair.a.hostname, pair.b.hostname}
    # Within a worker the pool puts each new session on its least-busy bridge.
    assert len(set(pids.values())) >= 4
    for sid in sids:
        assert pair.run(sid, "info")["pid"] == pids[sid]


def test_racing_first_calls_end_with_one_owner_and_run_once(pair: Pair) -> None:
    sid = pair.sid("race")
    barrier = threading.Barrier(12)
    results: list[Any] = []

    def first_call() -> None:
        barrier.wait()
        results.append(pair.call.delay(sid, "increment_counter", {}))

    threads = [threading.Thread(target=first_call) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    values = sorted(r.get(timeout=30)["value"] for r in results)
    assert values == list(range(1, 13))  # each ran once, all on one state
    assert pair.run(sid, "get_counter") == {"value": 12}
    workers = [w.decode() for w in pair.sessions_redis.zrange(pair.leases.key("workers"), 0, -1)]
    holders = [w for w in workers if sid in pair.leases.owned(w)]
    assert holders == [pair.leases.route_of(sid)["owner"]]


def test_a_bound_session_keeps_its_pool(pair: Pair) -> None:
    sid = pair.sid("pooled")
    first = pair.run(sid, "info", pool="other")
    assert pair.run(sid, "info")["pid"] == first["pid"]  # no pool named: the session's own
    with pytest.raises(SessionError, match="bound to pool 'other'"):
        pair.call.apply_async((sid, "info", {}), {"pool": "python"})


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "semi;colon", "new\nline", "../up", "ключ"])
def test_bad_session_ids_are_refused_before_anything_is_sent(pair: Pair, bad: str) -> None:
    before = set(pair.sessions_redis.keys("*"))
    with pytest.raises(InvalidSessionId):
        pair.call.delay(bad, "ping", {})
    assert set(pair.sessions_redis.keys("*")) == before


def test_programs_are_built_in_the_session_and_run(pair: Pair) -> None:
    sid = pair.sid("prog")
    made = create_program(sid, {"template": "Q: {question}"}, app=pair.app).get(timeout=30)
    program_id = made["program_id"]
    assert pair.store.get_program(sid, program_id) == {"template": "Q: {question}"}
    out = execute_program(sid, program_id, {"question": "capital of France?"}, app=pair.app).get(timeout=30)
    assert out["output"] == "Q: capital of France?"
    assert out["built_by"] == pair.run(sid, "info")["pid"]


def test_an_idle_session_releases_its_consumer_and_wakes_on_the_next_call(pair: Pair) -> None:
    if not pair.a.broker.startswith("redis"):
        pytest.skip("consumers are released on a Redis broker only (RabbitMQ pays nothing per consumer)")
    sid = pair.sid("idle")
    pid = pair.run(sid, "set_counter", {"value": 41})
    pid = pair.run(sid, "info")["pid"]
    wait_for(lambda: pair.leases.route_of(sid).get("active") == "0", 15, "the consumer to be released")
    assert pair.run(sid, "increment_counter") == {"value": 42}
    assert pair.run(sid, "info")["pid"] == pid
    assert pair.leases.route_of(sid)["active"] == "1"


def test_expiry_drops_the_bridge_state_and_leaves_no_key(pair: Pair) -> None:
    sid = pair.sid("expiring")
    pair.store.create_session(sid, ttl=2)
    assert pair.run(sid, "set_counter", {"value": 7}) == {"value": 7}
    owner = pair.owner(sid)
    amqp = not pair.a.broker.startswith("redis")  # (on Redis an empty queue has no key at all)
    assert pair.queue_exists(sid) or not amqp

    def bridge_sessions() -> int:
        return sum(b["sessions"] for p in owner.stats()["pools"].values() for b in p["bridges"])

    before = bridge_sessions()
    wait_for(lambda: not pair.session_keys(sid), 20, f"every key of {sid} to go")
    assert not pair.queue_exists(sid)
    wait_for(lambda: bridge_sessions() == before - 1, 10, "the bridge to drop the session")
    # The id can be used again: a brand-new session.
    assert pair.run(sid, "get_counter") == {"value": 0}


def test_a_call_longer_than_the_ttl_keeps_its_session(pair: Pair) -> None:
    sid = pair.sid("long-call")
    pair.store.create_session(sid, ttl=2)
    assert pair.run(sid, "set_counter", {"value": 5}) == {"value": 5}
    # Twice the TTL inside one call: the owner keeps the data alive while it runs.
    assert pair.run(sid, "sleep", {"seconds": 4.5})["cancelled"] is False
    assert pair.store.session_exists(sid), "the session's data expired under a running call"
    assert pair.run(sid, "get_counter") == {"value": 5}  # the bridge state too
    # Idle from here on, it expires after all: the TTL runs from the end of the last call.
    wait_for(lambda: not pair.session_keys(sid), 20, f"every key of {sid} to go once idle")


# -- failover: a pair of its own per test, one of them killed ------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_failover_after_sigkill_loses_and_repeats_no_call(worker_factory: WorkerFactory, broker: str) -> None:
    # Consumers released only after 30 s: one on now was turned on by the takeover.
    pair = Pair(worker_factory, broker, env={"SNAKEPIT_SESSION_CONSUMER_IDLE": "30"})
    try:
        sid = pair.sid("failover")
        made = create_program(sid, {"operation": "multiply", "operand": 3}, app=pair.app).get(timeout=30)
        assert pair.run(sid, "set_counter", {"value": 100}) == {"value": 100}
        owner = pair.owner(sid)
        survivor = pair.b if owner is pair.a else pair.a
        old_pids = set(owner.bridge_pids())
        # Idle sessions of the same owner, handed over with the busy one.
        idle = [s for s in (pair.sid("idle") for _ in range(8)) if pair.run(s, "set_counter", {"value": 7})]
        idle = [s for s in idle if pair.owner(s) is owner]
        assert idle, "no idle session landed on the owner"
        # The owner is busy with a slow call while more calls queue behind it
        # (some prefetched by it, unacknowledged, the rest in the queue).
        slow = pair.call.delay(sid, "sleep", {"seconds": 3})
        queued = [pair.call.delay(sid, "increment_counter", {}) for _ in range(20)]
        wait_for(lambda: owner.stats()["busy"] >= 1, 10, "the slow call to start")
        killed_at = time.monotonic()
        owner.process.signal(signal.SIGKILL)
        values = [r.get(timeout=40)["value"] for r in queued]
        taken_over_in = time.monotonic() - killed_at
        # The counter was bridge state, lost with the dead bridge: the new bridge
        # starts the session from its stored data. Each call ran exactly once, in order.
        assert values == list(range(1, 21)), values
        assert slow.get(timeout=30)["slept"] >= 3  # it was running: run again, on the survivor
        assert taken_over_in < 3 * 1.25 + 1 + 5, f"takeover took {taken_over_in:.1f}s"
        info = pair.run(sid, "info")
        assert info["pid"] in survivor.bridge_pids() and info["pid"] not in old_pids
        assert pair.owner(sid) is survivor
        # The program was rebuilt on the new bridge from its stored spec.
        out = execute_program(sid, made["program_id"], 5, app=pair.app).get(timeout=30)
        assert (out["output"], out["built_by"]) == (15, info["pid"])
        assert pair.run(sid, "get_counter") == {"value": 20}
        wait_for(lambda: all(pair.owner(s) is survivor for s in idle), 10, "the idle sessions to move")
        if broker == "redis":
            # Handed over with their consumers off: nobody called them since.
            assert [pair.leases.route_of(s)["active"] for s in idle] == ["0"] * len(idle)
        assert [pair.run(s, "info")["pid"] in survivor.bridge_pids() for s in idle] == [True] * len(idle)
    except BaseException:
        for w in (pair.a, pair.b):  # the workers' logs say what went wrong
            print(f"--- log of {w.hostname}:\n{w.process.log()[-20000:]}")
        raise
    finally:
        pair.cleanup()

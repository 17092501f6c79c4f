"""Every task that runs in a session takes the session's road: streams, batches, revokes, shutdown.

Two workers share one broker and one sessions Redis, so a session call that
went to a pool queue instead of its session's queue would land on the
non-owner about half the time; several sessions per test make that visible.
The bridges serve ``tests.handlers:TestHandler`` (the showcase plus
``counter_stream``, ``wait_file`` and ``record``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from itworkers import Worker, WorkerFactory, delete_queues, wait_for

from snakepit_celery import InvalidSessionId, stream
from snakepit_celery.sessions.lease import LeaseTable
from snakepit_celery.sessions.routing import session_queue

REPO = Path(__file__).resolve().parents[2]
POOLS = {"python": {"size": 2, "handler": "tests.handlers:TestHandler"}}
ENV = {
    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    "SNAKEPIT_SESSION_LEASE_TTL": "3",
    "SNAKEPIT_SESSION_EXPIRY_GRACE": "0.5",
    "SNAKEPIT_SESSION_EXPIRY_INTERVAL": "0.5",
}


class Pair:
    """Two workers of one prefix, broker and sessions Redis."""

    def __init__(self, factory: WorkerFactory, broker: str) -> None:
        env = dict(ENV)
        if broker == "redis":
            env["SNAKEPIT_SESSION_CONSUMER_IDLE"] = "1.5"
        self.a = factory(POOLS, broker=broker, name="a", env=env, args=("--concurrency", "4"), wait=False)
        self.b = factory(
            POOLS,
            broker=self.a.broker,
            name="b",
            prefix=self.a.prefix,
            env={**env, "IT_BACKEND": self.a.env["IT_BACKEND"]},
            args=("--concurrency", "4"),
        )
        self.a.process.wait_ready(self.a.app, self.a.hostname, timeout=60)
        self.app = self.a.app
        self.prefix = self.a.prefix
        self.on_redis = self.a.broker.startswith("redis")
        self.call = self.app.tasks["snakepit.execute_in_session"]
        self.batch = self.app.tasks["snakepit.execute_batch"]
        self.sessions_redis = redis.Redis.from_url(self.a.env["IT_BACKEND"])
        self.leases = LeaseTable(self.sessions_redis, self.prefix)
        self.used: set[str] = set()

    def sid(self, name: str) -> str:
        sid = f"{name}-{uuid.uuid4().hex[:8]}"
        self.used.add(sid)
        return sid

    def run(self, sid: str, command: str, args: Any = None) -> Any:
        return self.call.delay(sid, command, args or {}).get(timeout=30)

    def owner(self, sid: str) -> Worker:
        owner = self.leases.route_of(sid).get("owner", "")
        for w in (self.a, self.b):
            if owner.startswith(w.hostname + "#"):
                return w
        raise AssertionError(f"session {sid} has no live owner: {self.leases.route_of(sid)}")

    def journal(self, sid: str) -> dict[bytes, bytes]:
        return dict(self.sessions_redis.hgetall(self.leases.key("calls", sid)))

    def cleanup(self) -> None:
        """Delete the session queues this module made on a shared RabbitMQ (ours only)."""
        if not self.on_redis:
            delete_queues(self.a.broker, [session_queue(self.prefix, sid).name for sid in self.used])


@contextlib.contextmanager
def logs_on_failure(*workers: Worker) -> Iterator[None]:
    try:
        yield
    except BaseException:
        for w in workers:  # the workers' logs say what went wrong
            print(f"--- log of {w.hostname}:\n{w.process.log()[-20000:]}")
        raise


@pytest.fixture(scope="module", params=["redis", "amqp"])
def pair(request: pytest.FixtureRequest, module_worker_factory: WorkerFactory) -> Iterator[Pair]:
    pair = Pair(module_worker_factory, request.param)
    try:
        yield pair
    finally:
        pair.cleanup()


def test_a_session_stream_runs_on_the_owners_bridge_and_sees_the_sessions_state(pair: Pair) -> None:
    with logs_on_failure(pair.a, pair.b):
        sids = [pair.sid("stream") for _ in range(6)]
        pids = {}
        for n, sid in enumerate(sids):
            assert pair.run(sid, "set_counter", {"value": 10 * n}) == {"value": 10 * n}
            pids[sid] = pair.run(sid, "info")["pid"]
        assert {pair.owner(sid).hostname for sid in sids} == {pair.a.hostname, pair.b.hostname}
        for n, sid in enumerate(sids):
            chunks = list(stream("counter_stream", {"count": 3}, session_id=sid, app=pair.app))
            assert [c["value"] for c in chunks] == [10 * n + 1, 10 * n + 2, 10 * n + 3], sid
            assert {c["pid"] for c in chunks} == {pids[sid]}
            assert pids[sid] in pair.owner(sid).bridge_pids()
            # ... and the calls after it see what the stream did.
            assert pair.run(sid, "get_counter") == {"value": 10 * n + 3}
            if pair.on_redis:
                assert pair.journal(sid) == {}


def test_a_session_stream_waits_its_turn_among_the_sessions_calls(pair: Pair) -> None:
    sid = pair.sid("stream-order")
    assert pair.run(sid, "set_counter", {"value": 0}) == {"value": 0}
    before = [pair.call.delay(sid, "increment_counter", {}) for _ in range(20)]
    reader = stream("counter_stream", {"count": 5}, session_id=sid, app=pair.app)
    after = [pair.call.delay(sid, "increment_counter", {}) for _ in range(20)]
    with reader:
        values = [c["value"] for c in reader]
    assert [r.get(timeout=30)["value"] for r in before] == list(range(1, 21))
    assert values == list(range(21, 26))
    assert [r.get(timeout=30)["value"] for r in after] == list(range(26, 46))


def test_a_bad_session_id_is_refused_before_a_stream_is_sent(pair: Pair) -> None:
    before = set(pair.sessions_redis.keys("*"))
    for bad in ("", "a b", "x" * 129, "semi;colon"):
        with pytest.raises(InvalidSessionId):
            stream("counter_stream", {}, session_id=bad, app=pair.app)
    assert set(pair.sessions_redis.keys("*")) == before


def test_a_session_batch_runs_in_turn_with_the_sessions_calls(pair: Pair) -> None:
    with logs_on_failure(pair.a, pair.b):
        for n in range(4):  # several sessions: some owned by each worker
            sid = pair.sid("batch")
            assert pair.run(sid, "set_counter", {"value": 0}) == {"value": 0}
            pid = pair.run(sid, "info")["pid"]
            before = [pair.call.delay(sid, "increment_counter", {}) for _ in range(10)]
            batch = pair.batch.apply_async(("increment_counter", [{}] * 10), {"session_id": sid})
            after = [pair.call.delay(sid, "increment_counter", {}) for _ in range(10)]
            assert [r.get(timeout=30)["value"] for r in before] == list(range(1, 11))
            assert sorted(r["value"] for r in batch.get(timeout=30)) == list(range(11, 21))
            assert [r.get(timeout=30)["value"] for r in after] == list(range(21, 31)), n
            batch_pids = pair.batch.apply_async(("info", [{}] * 3), {"session_id": sid}).get(timeout=30)
            assert {r["pid"] for r in batch_pids} == {pid}
            if pair.on_redis:
                assert pair.journal(sid) == {}


def test_revoked_and_unsent_calls_leave_the_journal(pair: Pair, tmp_path: Path) -> None:
    if not pair.on_redis:
        pytest.skip("the journal covers kombu's Redis transport only")
    sid = pair.sid("revoke")
    gate, log = tmp_path / "gate", tmp_path / "ran.log"
    log.touch()
    assert pair.run(sid, "set_counter", {"value": 0}) == {"value": 0}
    # The owner is held by a gated call while three more of each kind queue behind it.
    held = pair.call.delay(sid, "wait_file", {"path": str(gate), "token": "held", "log": str(log)})
    wait_for(lambda: "held" in log.read_text(), 20, "the gated call to start")
    doomed = [
        pair.call.delay(sid, "record", {"log": str(log), "token": "revoked-call"}),
        pair.batch.apply_async(("record", [{"log": str(log), "token": "gone"}]), {"session_id": sid}),
    ]
    kept = pair.call.delay(sid, "record", {"log": str(log), "token": "kept"})
    assert set(pair.journal(sid)) >= {r.id.encode() for r in (*doomed, kept)}
    # With replies: both workers know of the revoke before the gate opens.
    replies = pair.app.control.revoke([r.id for r in doomed], reply=True, timeout=5)
    assert len(replies) == 2, replies
    gate.touch()
    assert held.get(timeout=30)["released"]
    assert kept.get(timeout=30)["token"] == "kept"
    assert log.read_text().split() == ["held", "kept"]
    wait_for(lambda: pair.journal(sid) == {}, 10, "the revoked calls to leave the journal")
    # A publish that fails after routing (a countdown Celery cannot use) leaves nothing behind.
    with pytest.raises(TypeError):
        pair.call.apply_async((sid, "ping", {}), countdown="soon")
    assert pair.journal(sid) == {}
    assert pair.run(sid, "get_counter") == {"value": 0}


# -- warm shutdown of an owner: its own pair, one worker stopped ------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_sigterm_of_the_owner_mid_call_runs_every_call_once_in_order(
    worker_factory: WorkerFactory, broker: str, tmp_path: Path
) -> None:
    """The owner stops (SIGTERM) while a call of its session runs and many more
    wait: some started on its threads (in line), some prefetched, the rest in
    the queue. It finishes what it started, puts the rest back, and only then
    hands the session over; the other worker runs the rest, in order."""
    pair = Pair(worker_factory, broker)
    with logs_on_failure(pair.a, pair.b):
        try:
            sid = pair.sid("shutdown")
            gate, log = tmp_path / "gate", tmp_path / "ran.log"
            log.touch()
            first = pair.run(sid, "info")["pid"]
            owner = pair.owner(sid)
            survivor = pair.b if owner is pair.a else pair.a
            assert first in owner.bridge_pids()
            held = pair.call.delay(sid, "wait_file", {"path": str(gate), "token": "0", "log": str(log)})
            rest = [pair.call.delay(sid, "record", {"log": str(log), "token": str(i)}) for i in range(1, 61)]
            wait_for(lambda: log.read_text().split() == ["0"], 20, "the gated call to start")
            owner.process.signal(signal.SIGTERM)
            wait_for(lambda: "Warm shutdown" in owner.process.log(), 20, "the owner's warm shutdown")
            gate.touch()
            assert held.get(timeout=30) == {"pid": first, "released": True, "token": "0"}
            results = [r.get(timeout=60) for r in rest]
            assert [r["token"] for r in results] == [str(i) for i in range(1, 61)]
            assert log.read_text().split() == [str(i) for i in range(61)]  # each once, in order
            assert owner.process.wait(30) == 0
            assert pair.owner(sid) is survivor
            ran_on = {r["pid"] for r in results}
            assert ran_on <= {first, *survivor.bridge_pids()}, ran_on
            assert pair.run(sid, "info")["pid"] in survivor.bridge_pids()
            if pair.on_redis:
                assert pair.journal(sid) == {}
        finally:
            pair.cleanup()

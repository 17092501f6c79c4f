"""One worker's sessions: its lease, the calls it runs, wake-ups and hand-overs.

The :class:`SessionManager` lives as long as the worker. Three threads touch it:

* the consumer's thread, which sees each session message arrive, in queue
  order (:meth:`received`), and switches queue consumers (:class:`QueueSwitch`);
* the pool's threads, which run calls (:meth:`turn`, every task that runs in a
  session: see :mod:`.calls`), one at a time per session and in arrival order;
* its own threads: the wake thread (binds and wakes sessions named in this
  worker's wake list) and the housekeeper (:mod:`.housekeeping`: lease,
  failover, idle release, expiry).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import redis
from celery import signals
from celery.exceptions import Ignore, Reject
from celery.states import READY_STATES
from celery.worker import state as worker_state

from snakepit_celery.recovery import CallLedger
from snakepit_celery.sessions.calls import TASK_NAME, session_id_of
from snakepit_celery.sessions.consumer import LocalSession, QueueSwitch
from snakepit_celery.sessions.lease import LeaseTable
from snakepit_celery.sessions.ordering import SessionLines
from snakepit_celery.sessions.routing import session_queue_name
from snakepit_celery.sessions.settings import SessionSettings
from snakepit_celery.sessions.store import SessionStore

__all__ = ["TASK_NAME", "SessionManager", "session_id_of"]

log = logging.getLogger(__name__)

#: Seconds a session's consumer is off while a call sent before the one at hand
#: is still elsewhere (see :meth:`SessionManager._hold_back`).
HOLD_BACK = 0.3


class SessionManager:
    """The sessions this worker owns.

    Args:
        app: the Celery app.
        redis_url: the sessions Redis.
        prefix: the queue prefix.
        pools: names of the pools this worker hosts.
        hostname: the worker's node name (``celery@host``).
        settings: lease, release and expiry tunables.
        host: returns the worker's ``PoolHost`` (for the bridges).
    """

    def __init__(
        self,
        app: Any,
        *,
        redis_url: str,
        prefix: str,
        pools: list[str],
        hostname: str,
        settings: SessionSettings,
        host: Callable[[], Any],
    ) -> None:
        self.app = app
        self.prefix = prefix
        self.pools = list(pools)
        self.hostname = hostname
        self.settings = settings
        self.host = host
        #: This process' worker id: a new one per run, so a restarted worker
        #: never mistakes the sessions of its previous life for its own.
        self.worker_id = f"{hostname}#{secrets.token_hex(4)}"
        self.redis: Any = redis.Redis.from_url(redis_url)
        self.leases = LeaseTable(self.redis, prefix)
        #: The pool calls this worker holds, for whoever survives it (same lease).
        self.ledger = CallLedger(self.redis, prefix, self.worker_id, max_deliveries=settings.max_deliveries)
        self.store = SessionStore(self.redis, prefix=prefix, default_ttl=settings.session_ttl)
        self.lines = SessionLines()
        self.switch = QueueSwitch(prefix)
        self.sessions: dict[str, LocalSession] = {}
        #: Calls received and not finished, by session id (whether or not the
        #: session is local yet): a session with one is not idle.
        self._inflight: dict[str, set[str]] = {}
        #: Whether calls keep their session's send order through the journal (RabbitMQ:
        #: set by the session step; a Redis broker's failover restores the order itself).
        self.order_calls = False
        #: Whether idle consumers are released (Redis broker): set by the housekeeper.
        self.releases_consumers = False
        #: Sessions whose consumer is paused while an earlier call is elsewhere.
        self._held_back: set[str] = set()
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- life ----------------------------------------------------------------------

    def start(self) -> None:
        """Take the lease and start the wake and housekeeping threads."""
        from snakepit_celery.sessions.housekeeping import Housekeeper

        self.register()
        self.ledger.start()
        keeper = Housekeeper(self)
        for name, target in (("wake", self._wake_loop), ("housekeeping", keeper.run)):
            thread = threading.Thread(target=target, name=f"snakepit-sessions-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def register(self) -> None:
        lease_ms = int(self.settings.lease_ttl * 1000)
        sent_at = time.monotonic()
        self.leases.heartbeat(self.worker_id, self.pools, lease_ms, first=True)
        self.ledger.lease_renewed(sent_at, self.settings.lease_ttl)

    def stop(self) -> None:
        """Stop the threads and hand every session to the other workers."""
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        self.ledger.stop()
        try:
            handed = self.leases.leave(self.worker_id)
            if handed:
                log.info("snakepit: handed %d session(s) over to other workers", len(handed))
        except redis.RedisError:
            log.warning("snakepit: could not hand sessions over; they fail over when the lease lapses")

    # -- consumer thread -------------------------------------------------------------

    def received(self, session_id: str, task_id: str, has_eta: bool) -> None:
        """A session message arrived (consumer thread, in queue order)."""
        if not has_eta:
            self.lines.join(session_id, task_id)
        with self.lock:
            self._inflight.setdefault(session_id, set()).add(task_id)
            local = self.sessions.get(session_id)
            if local is not None:
                local.last_used = time.monotonic()

    def finished(self, session_id: str, task_id: str) -> None:
        """A session call ended (ran, failed, or was revoked); once or more, all the same."""
        self.lines.leave(session_id, task_id)
        with self.lock:
            calls = self._inflight.get(session_id)
            if calls is not None:
                calls.discard(task_id)
                if not calls:
                    del self._inflight[session_id]
            local = self.sessions.get(session_id)
            if local is not None:
                local.last_used = time.monotonic()

    def revoked(self, session_id: str, task_id: str) -> None:
        """A session call was revoked (or expired): it must not run, here or after a failover."""
        self.finished(session_id, task_id)
        try:
            self.leases.drop_call(session_id, task_id)
        except redis.RedisError as exc:
            log.warning("snakepit: session %s: revoked %s stays journalled: %s", session_id, task_id, exc)

    def busy(self, session_id: str) -> bool:
        """Whether a call of the session was received here and has not finished."""
        with self.lock:
            return session_id in self._inflight

    # -- wake thread -------------------------------------------------------------------

    def _wake_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                items = self.leases.pop_wakes(self.worker_id, timeout=1.0)
            except redis.RedisError as exc:
                log.warning("snakepit: session wake-ups: %s", exc)
                self.stopping.wait(1.0)
                continue
            # A takeover hands thousands over at once: handled a batch at a time.
            adopted = list(dict.fromkeys(sid for op, sid in items if op == "adopt"))
            called = list(dict.fromkeys(sid for op, sid in items if op != "adopt"))
            if adopted and self.releases_consumers:
                self.adopt(adopted)
            else:
                called += adopted
            if called:
                self.activate(called)

    def adopt(self, session_ids: list[str]) -> None:
        """Take handed-over sessions as released ones (brokers that release idle consumers).

        Most sessions of a dead or leaving worker are idle: consuming every queue
        at once would cost each message of this worker thousands of queues (and
        kombu thousands of steps per queue added). Each is bound here with its
        consumer off, as if just released: the cooling checks consume those whose
        queue holds calls (restored, sent during the failover, or by a caller that
        routed just before), and later callers wake it as they would any idle one.
        """
        pools = self.leases.set_active(session_ids, self.worker_id, False)
        owned = [(sid, pool) for sid, pool in zip(session_ids, pools, strict=True) if pool is not None]
        with self.lock:
            new = [sid for sid, _pool in owned if sid not in self.sessions]
        if new:
            self.store.ensure_sessions(new)
            log.info("snakepit: %d session(s) handed over to this worker", len(new))
        now = time.monotonic()
        with self.lock:
            for session_id, pool in owned:
                local = self.sessions.setdefault(session_id, LocalSession(session_id, pool))
                if not local.consuming:
                    local.released_at = now  # the cooling checks start now

    def activate(self, session_ids: list[str]) -> list[str]:
        """Consume these sessions' queues where this worker owns them; returns those it owns.

        One round trip records them active, one more creates the data of those
        bound here for the first time (it must exist for expiry to apply), and
        the consumer adds their queues together.
        """
        pools = self.leases.set_active(session_ids, self.worker_id, True)
        owned = [(sid, pool) for sid, pool in zip(session_ids, pools, strict=True) if pool is not None]
        with self.lock:
            new = [(sid, pool) for sid, pool in owned if sid not in self.sessions]
        if new:
            # Before the session is local: expiry must never find it without data.
            self.store.ensure_sessions([sid for sid, _pool in new])
            if len(new) == 1:
                log.info("snakepit: session %s bound here (pool %s)", *new[0])
            else:
                log.info("snakepit: %d sessions bound here", len(new))
        added = []
        now = time.monotonic()
        with self.lock:
            for session_id, pool in owned:
                local = self.sessions.setdefault(session_id, LocalSession(session_id, pool))
                local.last_used = now
                local.released_at = None
                if not local.consuming:
                    local.consuming = True
                    added.append(session_id)
        for session_id in added:
            log.debug("snakepit: consuming session %s", session_id)
            self.switch.add(session_id)
        return [sid for sid, _pool in owned]

    # -- pool threads ------------------------------------------------------------------

    @contextmanager
    def turn(self, task: Any, session_id: str) -> Iterator[str]:
        """Hold one session call's turn while its body runs; yields the session's pool.

        Every task that runs in a session (see :mod:`.calls`) runs its body in
        here, so each one: is sent on to its session's queue if it came on
        another; waits until the calls received before it have finished; does
        not run if it was revoked meanwhile; is not run again when it is a
        redelivery of a call that already ran; runs only on the session's
        owner, which takes it out of the journal and refreshes the session's
        TTL; and counts as in flight until it ends (idle release
        and expiry leave a busy session alone).

        Raises:
            Reject: this worker does not own the session; the message goes back
                to the queue (a task acknowledged late; one acknowledged early is
                sent to the session's queue again and ignored here).
            Ignore: the call was sent on to its session's queue, was revoked, or
                is a duplicate of a call that already ran.
        """
        request = task.request
        task_id = request.id
        delivery = request.delivery_info or {}
        try:
            if delivery.get("routing_key") not in (None, session_queue_name(self.prefix, session_id)):
                # Sent around the router (a hand-set queue, or a pool queue): hand it
                # to its session queue under the same id, so the caller's result
                # (or stream) still arrives.
                self._send_again(task)
                raise Ignore()
            self.lines.wait_turn(session_id, task_id)
            if task_id in worker_state.revoked:
                # Revoked while it waited its turn: Celery counts it as started, so
                # nothing else stops it. Announced as Celery does (our handler drops
                # it from the journal; a stream's readers get its final entry).
                signals.task_revoked.send(
                    sender=task, request=request, terminated=False, signum=None, expired=False
                )
                with suppress(NotImplementedError):  # no result backend
                    task.backend.mark_as_revoked(task_id, "revoked", request=request)
                raise Ignore()
            if delivery.get("redelivered") and task.AsyncResult(task_id).state in READY_STATES:
                self.leases.drop_call(session_id, task_id)
                raise Ignore()  # it ran before its owner died, only the ack was lost
            order_wait = None
            if self.order_calls and getattr(task, "acks_late", False):
                order_wait = int(self.settings.order_wait * 1000)
            status, bound_pool, earlier = self.leases.begin_call(
                session_id, self.worker_id, time.time(), task_id, order_wait
            )
            if status == "early":
                self._hold_back(session_id)
                raise Reject(
                    f"session {session_id!r}: call {earlier} was sent before {task_id} and has not begun",
                    requeue=True,
                )
            if status == "notmine":
                if getattr(task, "acks_late", False):
                    raise Reject(f"session {session_id!r} is not owned by {self.worker_id}", requeue=True)
                self._send_again(task)  # already acknowledged: a requeue would lose it
                raise Ignore()
            if status == "missing":
                self.store.create_session(session_id)  # expired just now; the call revives it
            with self.lock:
                if session_id not in self.sessions:
                    self.sessions[session_id] = LocalSession(session_id, bound_pool, consuming=True)
            yield bound_pool
        finally:
            self.finished(session_id, task_id)

    def _hold_back(self, session_id: str) -> None:
        """Stop taking the session's calls for a moment: an earlier call is elsewhere.

        On RabbitMQ a frozen owner's prefetched calls come back only when it wakes
        (or its connection dies), and this worker's own prefetched later calls,
        unacknowledged, would keep them from being delivered here. So every call
        of the session this worker holds goes back to the queue (each finds the
        earlier call missing and is rejected, in place), the consumer is off for
        :data:`HOLD_BACK` seconds, and then takes the queue again from its head.
        """
        with self.lock:
            if session_id in self._held_back:
                return
            self._held_back.add(session_id)
        log.info(
            "snakepit: session %s: an earlier call is not here yet; its calls go back in line", session_id
        )
        self.switch.cancel(session_id)
        timer = threading.Timer(HOLD_BACK, self._resume, args=(session_id,))
        timer.daemon = True
        timer.start()

    def _resume(self, session_id: str) -> None:
        with self.lock:
            self._held_back.discard(session_id)
            local = self.sessions.get(session_id)
            if local is None or not local.consuming or self.stopping.is_set():
                return  # released or lost meanwhile: its next call wakes it as usual
        self.switch.add(session_id)

    @staticmethod
    def _send_again(task: Any) -> None:
        """Publish the running message again through the session router, under its own id."""
        request = task.request
        task.apply_async(request.args, request.kwargs, task_id=request.id)

    def run_call(
        self,
        task: Any,
        session_id: str,
        command: str,
        args: Any,
        *,
        pool: str | None,
        timeout: float | None,
        idempotent: bool,
    ) -> Any:
        """Run one ``execute_in_session`` call on the session's bridge, in its turn (see :meth:`turn`)."""
        with self.turn(task, session_id) as bound_pool:
            return (
                self.host()
                .pool(bound_pool or pool)
                .execute(
                    command,
                    args,
                    timeout=timeout,
                    session_id=session_id,
                    request_id=task.request.id,
                    idempotent=idempotent,
                )
            )

    # -- leaving -----------------------------------------------------------------------

    def drop_local(self, session_id: str, *, end_bridge: bool = True) -> None:
        """Forget a session here: consumer off, line cleared, bridge state dropped."""
        with self.lock:
            local = self.sessions.pop(session_id, None)
        done = threading.Event()
        self.switch.cancel(session_id, done)
        done.wait(5)
        self.lines.drop(session_id)
        if end_bridge and local is not None:
            try:
                self.host().pool(local.pool).end_session(session_id)
            except Exception as exc:
                log.warning("snakepit: ending session %s on its bridge: %s", session_id, exc)

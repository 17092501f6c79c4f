"""The owner's periodic work: keep the lease, take over the dead, release, expire.

Every tick (a fraction of a second) the housekeeper of each worker:

* renews its lease every ``lease_ttl / 4``; if it finds it was declared dead
  (stalled longer than the lease), it drops its sessions and registers anew;
* claims workers whose lease lapsed: one claimer per dead worker (atomic in
  Redis) restores the messages the dead one had prefetched (Redis broker),
  then hands each of its sessions to the least-loaded live worker, whose wake
  thread re-binds it; the new bridge is initialised from the stored session
  data on the session's next call (the pool's ``session_loader``);
* recovers the pool calls a dead worker held (:mod:`snakepit_celery.recovery`):
  puts its messages back in their queues (Redis broker), with any old
  unacknowledged pool message that no live worker holds, and keeps the
  messages this worker holds from kombu's visibility timeout;
* adopts orphans: sessions no live worker of their pool could take;
* releases consumers of idle sessions (Redis broker), and for a few seconds
  after, checks their queues for calls sent just as it released;
* restarts the TTL of the sessions that have a call running or waiting, so
  an idle session's TTL counts from the end of its last call;
* expires sessions whose data has expired and that run no call: consumer
  off, queue deleted if empty, bridge state dropped, route removed. A call
  that arrives meanwhile keeps the session alive instead.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import redis

from snakepit_celery.sessions.broker import BrokerOps
from snakepit_celery.sessions.calls import read_journal_entry

if TYPE_CHECKING:
    from snakepit_celery.sessions.manager import SessionManager

__all__ = ["Housekeeper"]

log = logging.getLogger(__name__)

#: Seconds between two ticks.
TICK = 0.25
#: Seconds a claimer may take before others adopt a dead worker's sessions themselves.
FAILOVER_GRACE = 30.0
#: Seconds an expiring session waits for its last calls to finish.
EXPIRY_DRAIN = 30.0
#: Seconds after a consumer is cancelled before its queue counts as settled
#: (a BRPOP sent before the cancel has answered by then: kombu's timeout is 1 s).
SETTLE = 1.2
#: Seconds between two scans for unacknowledged pool messages nobody holds
#: (besides the scan at each takeover): covers holders that left no lease.
UNHELD_SCAN_INTERVAL = 60.0


class Housekeeper:
    """The periodic work of one :class:`SessionManager`."""

    def __init__(self, manager: SessionManager) -> None:
        self.m = manager
        self.broker = BrokerOps(manager.app, manager.prefix)
        self._next_beat = 0.0
        self._next_expiry = 0.0
        self._idle: float | None = None
        self._next_scan = time.monotonic() + UNHELD_SCAN_INTERVAL

    def run(self) -> None:
        m = self.m
        try:
            self._set_idle()
        except Exception as exc:  # the broker is down at start; decide when it is back
            log.warning("snakepit: sessions: broker not reachable yet: %s", exc)
        while not m.stopping.wait(TICK):
            try:
                self.tick()
            except (redis.RedisError, OSError) as exc:
                log.warning("snakepit: sessions housekeeping: %s", exc)
                self.broker.close()
            except Exception:
                log.exception("snakepit: sessions housekeeping failed")
                self.broker.close()
        self.broker.close()

    def tick(self) -> None:
        now = time.monotonic()
        if self._idle is None:
            self._set_idle()
        if now >= self._next_beat:
            self._next_beat = now + self.m.settings.heartbeat_interval
            self.beat()
            self.take_over_dead()
            self.adopt_orphans()
            self.broker.refresh_unacked(self.m.ledger.held_tags())
            if now >= self._next_scan:
                self._next_scan = now + UNHELD_SCAN_INTERVAL
                self.put_back_unheld()
        if self._idle:
            self.release_idle(now)
            self.check_released(now)
        if now >= self._next_expiry:
            self._next_expiry = now + self.m.settings.expiry_interval
            self.expire()

    def _set_idle(self) -> None:
        self._idle = self.m.settings.consumer_idle_for(self.broker.is_redis)
        self.m.releases_consumers = bool(self._idle)

    # -- lease and failover ----------------------------------------------------------

    def beat(self) -> None:
        m = self.m
        lease_ms = int(m.settings.lease_ttl * 1000)
        sent_at = time.monotonic()
        if m.leases.heartbeat(m.worker_id, m.pools, lease_ms):
            m.ledger.lease_renewed(sent_at, m.settings.lease_ttl)
            return
        log.warning("snakepit: worker %s was declared dead (stalled?); dropping its sessions", m.worker_id)
        with m.lock:
            lost = list(m.sessions)
        for session_id in lost:
            m.drop_local(session_id)
        m.ledger.declared_dead()  # what it holds now may have been put back for others
        m.register()

    def take_over_dead(self) -> None:
        m = self.m
        for dead in m.leases.dead_workers():
            if dead == m.worker_id:
                continue
            sessions = m.leases.claim(dead)
            if sessions is None:
                continue  # another worker claimed it
            self.recover_calls(dead)
            log.warning("snakepit: worker %s is gone; taking over its %d session(s)", dead, len(sessions))
            # Before anyone consumes these queues again, or a message would run twice.
            restored = self.broker.restore_unacked(sessions)
            if self.broker.is_redis:
                self.recover_lost(sessions, restored)
            m.leases.adopt(sessions)

    def recover_calls(self, dead: str) -> None:
        """Hand the pool calls a dead worker held to the living (its claimer only)."""
        tags = self.m.ledger.recover(dead)
        restored = self.broker.restore_tags(tags)
        restored += self.put_back_unheld()
        if tags or restored:
            log.warning(
                "snakepit: worker %s held %d pool call(s); %d put back in their queues",
                dead,
                len(tags),
                restored,
            )

    def put_back_unheld(self) -> int:
        """Put back old unacknowledged pool messages that no live worker holds
        (Redis broker): those of a worker that died before recording them."""
        m = self.m
        # Live holders refresh theirs every beat: older than half a lease is nobody's.
        before = time.time() - m.settings.lease_ttl / 2
        candidates = self.broker.stale_unacked(m.ledger.pool_queue_prefix, before)
        return self.broker.restore_tags(m.ledger.unheld(candidates))

    def recover_lost(self, sessions: list[str], restored: dict[str, int]) -> None:
        """Republish journaled calls of a dead owner's sessions that are nowhere else.

        Args:
            sessions: the dead owner's sessions.
            restored: how many unacked messages were put back, per session.
        """
        m = self.m
        journals = m.leases.journals(sessions)  # most sessions have none: no more round trips
        if not journals:
            return
        # Younger entries may belong to callers still between routing and publishing.
        horizon = m.leases.now_ms() - int(m.settings.expiry_grace * 1000)
        for session_id, journal in journals.items():
            present = self.broker.queued_ids(session_id)
            pool = m.leases.route_of(session_id).get("pool")
            lost = []
            for _seq, routed_ms, task_id, raw in journal:
                if routed_ms < horizon and task_id not in present:
                    name, args, kwargs, options = read_journal_entry(raw, session_id)
                    kwargs["pool"] = pool
                    lost.append((task_id, name, args, kwargs, options))
            self.broker.recover_lost(session_id, lost, restored.get(session_id, 0))

    def adopt_orphans(self) -> None:
        m = self.m
        for pool in m.pools:
            m.leases.adopt(m.leases.orphans(pool), grace_ms=int(FAILOVER_GRACE * 1000))

    # -- idle release ---------------------------------------------------------------------

    def release_idle(self, now: float) -> None:
        m = self.m
        assert self._idle
        with m.lock:
            idle = [
                s.session_id
                for s in m.sessions.values()
                if s.consuming and not m.busy(s.session_id) and now - s.last_used > self._idle
            ]
        # Callers that read "inactive" from now on wake us; the cooling checks
        # catch calls sent by those that read "active" just before.
        pools = m.leases.set_active(idle, m.worker_id, False)
        for session_id, pool in zip(idle, pools, strict=True):
            if pool is None:
                m.drop_local(session_id)  # no longer ours
                continue
            with m.lock:
                local = m.sessions.get(session_id)
                if local is None or m.busy(session_id):
                    continue
                local.consuming = False
                local.released_at = now
            log.debug("snakepit: session %s idle; consumer released", session_id)
            m.switch.cancel(session_id)

    def check_released(self, now: float) -> None:
        m = self.m
        cooling = m.settings.release_cooling + SETTLE
        with m.lock:
            recent = [
                s.session_id
                for s in m.sessions.values()
                if not s.consuming and s.released_at is not None and now - s.released_at < cooling
            ]
        waiting = [sid for sid, size in zip(recent, self.broker.sizes(recent), strict=True) if size]
        if waiting:
            m.activate(waiting)

    # -- expiry -----------------------------------------------------------------------------

    def expire(self) -> None:
        m = self.m
        with m.lock:
            mine = list(m.sessions)
        if not mine:
            return
        busy = {session_id for session_id in mine if m.busy(session_id)}
        # A session in use is not idle: its TTL restarts every check while a call
        # runs (or waits its turn), so its data does not expire under a long call
        # (given a TTL above expiry_interval) and its idle time counts from the
        # end of its last call.
        m.store.keep_alive(busy)
        idle = [session_id for session_id in mine if session_id not in busy]
        if not idle:
            return
        with m.redis.pipeline(transaction=False) as pipe:
            for session_id in idle:
                pipe.exists(m.leases.key("session", session_id))
            alive = pipe.execute()
        for session_id, exists in zip(idle, alive, strict=True):
            # Busy again since the list was made: a call arrived, it lives on.
            if not exists and not m.stopping.is_set() and not m.busy(session_id):
                self.expire_one(session_id)

    def expire_one(self, session_id: str) -> None:
        m = self.m
        grace_ms = int(m.settings.expiry_grace * 1000)
        status = m.leases.expire_begin(session_id, m.worker_id, grace_ms)
        if status == "notmine":
            m.drop_local(session_id)
            return
        if status != "closing":
            return
        log.info("snakepit: session %s expired; closing it", session_id)
        done = threading.Event()
        with m.lock:
            local = m.sessions.get(session_id)
            if local is not None:
                local.consuming = False
        m.switch.cancel(session_id, done)
        done.wait(5)
        deadline = time.monotonic() + EXPIRY_DRAIN
        m.stopping.wait(SETTLE)
        while m.lines.waiting(session_id) and time.monotonic() < deadline:
            m.stopping.wait(0.05)
        route = m.leases.route_of(session_id)
        if route.get("owner") != m.worker_id:
            m.drop_local(session_id)
            return
        if route.get("state") != "closing" or not self.broker.delete_if_empty(session_id):
            # A call came after all: the session lives on.
            m.leases.expire_abort(session_id, m.worker_id)
            m.activate([session_id])
            return
        m.drop_local(session_id)
        m.leases.forget(session_id, m.worker_id)
        m.store.delete_session(session_id)  # its index entry
        log.info("snakepit: session %s closed", session_id)

"""Who owns which session: worker leases and session routes in Redis.

A session is owned by one worker process. Rather than one lease per session
(a worker with thousands of sessions would renew thousands of keys), each
worker holds one lease, its entry in ``<p>:workers`` (a deadline it renews),
and each session's route names its owner: the session is owned while the
owner's lease is live. When a lease lapses, one surviving worker claims the
dead one (removing its entry is atomic, so exactly one wins) and hands its
sessions to live workers. Every decision is one Lua script reading Redis'
own clock, so callers and workers on different machines agree.

Keys (``<p>`` is the queue prefix; the sessions Redis must not be a cluster)::

    <p>:workers          zset  worker id -> lease deadline (ms)
    <p>:worker:<w>       hash  {pools: "a,b"} of a live worker
    <p>:load:<pool>      zset  worker id -> sessions it owns in that pool
    <p>:owned:<w>        set   session ids worker w owns
    <p>:wake:<w>         list  "bind <sid>" (a first call), "wake <sid>", "adopt <sid>" (handed over) for w
    <p>:orphans:<pool>   set   sessions waiting for an owner
    <p>:route:<sid>      hash  {owner, pool, active, state, routed_at, failover_at, seq}
    <p>:calls:<sid>      hash  task id -> "seq|ms|call JSON": calls not yet begun
    <p>:order:<sid>      zset  task id -> seq of the calls above that keep their place (RabbitMQ)

The journal (``calls``) covers a hole in kombu's Redis transport: BRPOP takes a
message off its list before the worker records it as unacknowledged, so a
message in flight when its worker dies is gone. The worker that claims a dead
owner republishes the journaled calls found neither in the queue nor among the
restored unacked messages (see :mod:`snakepit_celery.sessions.broker`).

On RabbitMQ the journal keeps the send order instead: a frozen owner's
connection stays open, so the calls it had prefetched stay unacknowledged to
it while the worker that took the session over receives the later ones. A call
whose session still has an earlier call journaled (not begun, sent less than
``order_wait`` ago, not scheduled with an ETA) does not begin: its owner gives
it back to the queue and pauses, until the earlier call is back (see
:meth:`SessionManager.turn <snakepit_celery.sessions.manager.SessionManager.turn>`).

An entry leaves the journal when its call begins on the owner, when its
publish fails, when it is revoked before it began, or when it turns out to be
a duplicate of a call that already ran: a call that must not run is never
republished, and the hash holds only calls still on their way.

Route states: ``bound`` (owned by ``owner``), ``orphan`` (no live worker had the
pool), ``failover`` (its owner died; the claimer is restoring its messages),
``closing`` (expiring; callers wait).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from snakepit_celery.integration.known_pools import LIVE_POOLS, hosted_pools
from snakepit_celery.sessions import leasescripts as lua

__all__ = ["BATCH", "LeaseTable", "Route"]

#: Sessions one script or pipeline handles at a time in a handover (takeover,
#: wake-ups, idle release): a round trip per batch rather than per session, and
#: no script holds Redis for long.
BATCH = 500


@dataclass(frozen=True)
class Route:
    """What routing a call found: ``status`` is one of ``bound`` (just bound to
    ``owner``), ``active``, ``woken``, ``orphan``, ``failover``, ``dead``,
    ``closing``, or ``pool`` (the session belongs to another pool)."""

    status: str
    owner: str
    pool: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]


class LeaseTable:
    """The Lua scripts over the keys above, for one prefix.

    Args:
        client: a ``redis.Redis`` client of the sessions Redis.
        prefix: the queue prefix (keys start with it).
    """

    def __init__(self, client: Any, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix
        reg = client.register_script
        self._route = reg(lua.ROUTE)
        self._heartbeat = reg(lua.HEARTBEAT)
        self._claim = reg(lua.CLAIM)
        self._adopt = reg(lua.ADOPT)
        self._set_active = reg(lua.SET_ACTIVE)
        self._begin = reg(lua.BEGIN_CALL)
        self._expire_begin = reg(lua.EXPIRE_BEGIN)
        self._expire_abort = reg(lua.EXPIRE_ABORT)
        self._forget = reg(lua.FORGET)
        self._live_pools = reg(LIVE_POOLS)

    def key(self, *parts: str) -> str:
        """``<prefix>:part:part``."""
        return ":".join((self.prefix, *parts))

    # -- callers -----------------------------------------------------------------

    def route(
        self,
        session_id: str,
        pool: str | None,
        default_pool: str,
        *,
        task_id: str = "",
        call: str = "",
        ordered: bool = False,
    ) -> Route:
        """Find (or choose, for a new session) the owner of a call, waking it if
        needed; with ``task_id``, journal the call (``call``: its JSON), and with
        ``ordered`` keep its place in the send order (see the module's docstring)."""
        args = [self.prefix, session_id, pool or "", default_pool, task_id, call, "1" if ordered else ""]
        status, owner, found = self._route(args=args)
        return Route(_text(status), _text(owner), _text(found))

    def journals(self, session_ids: list[str]) -> dict[str, list[tuple[int, int, str, str]]]:
        """Journaled calls not yet begun of these sessions, in a round trip per
        :data:`BATCH`: session id -> (seq, routed at ms, task id, call JSON), oldest
        first; sessions with none are left out."""
        found: dict[str, list[tuple[int, int, str, str]]] = {}
        for chunk in _chunks(session_ids):
            with self.redis.pipeline(transaction=False) as pipe:
                for sid in chunk:
                    pipe.hgetall(self.key("calls", sid))
                replies = pipe.execute()
            for sid, calls in zip(chunk, replies, strict=True):
                if calls:
                    entries = []
                    for task_id, raw in calls.items():
                        seq, ms, call = _text(raw).split("|", 2)
                        entries.append((int(seq), int(ms), _text(task_id), call))
                    found[sid] = sorted(entries)
        return found

    def drop_call(self, session_id: str, task_id: str) -> None:
        """Take a call out of the journal: it will not run (publish failed, revoked, duplicate)."""
        pipe = self.redis.pipeline()
        pipe.hdel(self.key("calls", session_id), task_id)
        pipe.zrem(self.key("order", session_id), task_id)
        pipe.execute()

    def now_ms(self) -> int:
        """Redis' clock, in ms."""
        seconds, micros = self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def route_of(self, session_id: str) -> dict[str, str]:
        """The session's route hash (empty when it has none)."""
        raw = self.redis.hgetall(self.key("route", session_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    # -- workers -----------------------------------------------------------------

    def heartbeat(self, worker: str, pools: list[str], lease_ms: int, *, first: bool = False) -> bool:
        """Renew ``worker``'s lease; False when it was declared dead meanwhile."""
        args = [self.prefix, worker, lease_ms, ",".join(pools), "1" if first else "0"]
        return bool(self._heartbeat(args=args))

    def live_pools(self) -> dict[str, list[str]]:
        """The pools the live workers host (by Redis' clock): pool -> worker ids, in one round trip.

        Callers read it to tell a pool some worker hosts from a typo
        (:mod:`snakepit_celery.integration.known_pools`).
        """
        return hosted_pools(self._live_pools(args=[self.prefix]))

    def dead_workers(self) -> list[str]:
        """Workers whose lease has lapsed (by Redis' clock)."""
        return [_text(w) for w in self.redis.zrangebyscore(self.key("workers"), "-inf", self.now_ms())]

    def claim(self, worker: str, *, leaving: bool = False) -> list[str] | None:
        """Take a dead (or leaving) worker's sessions into failover; None if
        another worker claimed it first or it is alive."""
        found = self._claim(args=[self.prefix, worker, "1" if leaving else "0"])
        if not found and found != []:
            return None
        return [_text(s) for s in found]

    def adopt(self, session_ids: list[str], *, grace_ms: int = 0) -> list[str | None]:
        """Give orphans (or failovers older than ``grace_ms``) a live owner, in a
        round trip per :data:`BATCH`; the owner chosen for each, or None."""
        owners: list[str | None] = []
        for chunk in _chunks(session_ids):
            owners += [_text(o) if o else None for o in self._adopt(args=[self.prefix, grace_ms, *chunk])]
        return owners

    def orphans(self, pool: str, count: int = 100) -> list[str]:
        """Some sessions of ``pool`` waiting for an owner."""
        return [_text(s) for s in self.redis.srandmember(self.key("orphans", pool), count)]

    def pop_wakes(self, worker: str, timeout: float) -> list[tuple[str, str]]:
        """Block up to ``timeout`` s for wake-ups of ``worker``, then take those
        waiting behind the first, up to :data:`BATCH`: [(op, sid), ...]."""
        key = self.key("wake", worker)
        first = self.redis.blpop([key], timeout=timeout)
        if first is None:
            return []
        items = [first[1], *(self.redis.lpop(key, BATCH - 1) or [])]
        return [(op, sid) for op, _, sid in (_text(i).partition(" ") for i in items)]

    # -- owners ------------------------------------------------------------------

    def set_active(self, session_ids: list[str], worker: str, active: bool) -> list[str | None]:
        """Record whether ``worker`` consumes these sessions' queues, in a round
        trip per :data:`BATCH`; for each, its pool, or None when ``worker`` does
        not own it (nothing recorded)."""
        pools: list[str | None] = []
        for chunk in _chunks(session_ids):
            reply = self._set_active(args=[self.prefix, worker, "1" if active else "0", *chunk])
            pools += [_text(p) if p else None for p in reply]
        return pools

    def begin_call(
        self, session_id: str, worker: str, now: float, task_id: str = "", order_wait_ms: int | None = None
    ) -> tuple[str, str, str]:
        """Before a call: (status, pool, earlier); refreshes the data's TTL.

        ``status`` is "ok", "missing" (the session's data expired), "notmine",
        or, with ``order_wait_ms``, "early": ``earlier``, a call of the session
        sent before this one less than ``order_wait_ms`` ago, has not begun.
        """
        wait = "" if order_wait_ms is None else str(order_wait_ms)
        status, pool, earlier = self._begin(args=[self.prefix, session_id, worker, now, task_id, wait])
        return _text(status), _text(pool), _text(earlier)

    def expire_begin(self, session_id: str, worker: str, grace_ms: int) -> str:
        """Start closing an expired session: "closing", or why not
        ("alive", "recent", "notmine")."""
        return _text(self._expire_begin(args=[self.prefix, session_id, worker, grace_ms]))

    def expire_abort(self, session_id: str, worker: str) -> bool:
        """A closing session's queue was not empty: keep it bound."""
        return bool(self._expire_abort(args=[self.prefix, session_id, worker]))

    def forget(self, session_id: str, worker: str) -> bool:
        """Remove the route of a session ``worker`` closed (or drop it from its set)."""
        return bool(self._forget(args=[self.prefix, session_id, worker]))

    def owned(self, worker: str) -> set[str]:
        """Sessions ``worker`` owns, per Redis."""
        return {_text(s) for s in self.redis.smembers(self.key("owned", worker))}

    def leave(self, worker: str) -> list[str]:
        """A worker stopping on purpose: its sessions become orphans now."""
        sids = self.claim(worker, leaving=True) or []
        self.adopt(sids)
        return sids

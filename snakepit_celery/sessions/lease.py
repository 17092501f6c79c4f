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
    <p>:wake:<w>         list  "bind <sid>" / "wake <sid>" for worker w
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

from dataclasses import dataclass
from typing import Any

__all__ = ["LeaseTable", "Route"]

_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function alive(P, w, now)
  local dl = redis.call('ZSCORE', P .. ':workers', w)
  return dl and tonumber(dl) > now
end
local function assign(P, sid, pool, now)
  local rk = P .. ':route:' .. sid
  local chosen = false
  for _, w in ipairs(redis.call('ZRANGE', P .. ':load:' .. pool, 0, -1)) do
    if alive(P, w, now) then chosen = w; break end
  end
  if not chosen then
    redis.call('HSET', rk, 'owner', '', 'pool', pool, 'active', '0', 'state', 'orphan', 'routed_at', now)
    redis.call('SADD', P .. ':orphans:' .. pool, sid)
    return false
  end
  redis.call('HSET', rk, 'owner', chosen, 'pool', pool, 'active', '0', 'state', 'bound', 'routed_at', now)
  redis.call('SADD', P .. ':owned:' .. chosen, sid)
  redis.call('ZINCRBY', P .. ':load:' .. pool, 1, chosen)
  redis.call('SREM', P .. ':orphans:' .. pool, sid)
  redis.call('RPUSH', P .. ':wake:' .. chosen, 'bind ' .. sid)
  return chosen
end
"""

# ARGV: prefix, sid, requested pool ('' = the session's or the default), default
# pool, task id and call JSON to journal ('' = no journal), '1' to keep its place
# in the send order.  Returns {status, owner, pool}.
_ROUTE = (
    _COMMON
    + """
local P, sid, want, default = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()
local rk = P .. ':route:' .. sid
local function journal()
  if ARGV[5] == '' then return end
  local seq = redis.call('HINCRBY', rk, 'seq', 1)
  redis.call('HSET', P .. ':calls:' .. sid, ARGV[5], seq .. '|' .. now .. '|' .. ARGV[6])
  if ARGV[7] == '1' then redis.call('ZADD', P .. ':order:' .. sid, seq, ARGV[5]) end
end
local r = redis.call('HMGET', rk, 'owner', 'pool', 'active', 'state')
if not r[2] then
  local pool = want ~= '' and want or default
  local w = assign(P, sid, pool, now)
  journal()
  if w then return {'bound', w, pool} end
  return {'orphan', '', pool}
end
if want ~= '' and want ~= r[2] then return {'pool', r[1], r[2]} end
if r[4] == 'closing' then return {'closing', r[1], r[2]} end
redis.call('HSET', rk, 'routed_at', now)
journal()
if r[4] ~= 'bound' then return {r[4], '', r[2]} end
if not alive(P, r[1], now) then return {'dead', r[1], r[2]} end
if r[3] ~= '1' then
  redis.call('RPUSH', P .. ':wake:' .. r[1], 'wake ' .. sid)
  return {'woken', r[1], r[2]}
end
return {'active', r[1], r[2]}
"""
)

# ARGV: prefix, worker id, lease ms, pools csv, first ('1' registers).
# Returns 1, or 0 when the worker was declared dead (its sessions are gone).
_HEARTBEAT = """
local P, w, ttl, pools, first = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local k = P .. ':workers'
if first ~= '1' and not redis.call('ZSCORE', k, w) then return 0 end
redis.call('ZADD', k, now + ttl, w)
if first == '1' then
  redis.call('HSET', P .. ':worker:' .. w, 'pools', pools)
  for pool in string.gmatch(pools, '[^,]+') do
    redis.call('ZADD', P .. ':load:' .. pool, 'NX', 0, w)
  end
end
return 1
"""

# ARGV: prefix. Read-only: {worker, pools csv, ...} of every worker whose lease is live.
_LIVE_POOLS = """
local P = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, w in ipairs(redis.call('ZRANGEBYSCORE', P .. ':workers', '(' .. now, '+inf')) do
  out[#out + 1] = w
  out[#out + 1] = redis.call('HGET', P .. ':worker:' .. w, 'pools') or ''
end
return out
"""

# ARGV: prefix, dead worker id, '1' when it leaves on purpose (skip the deadline check).
# Returns the sessions it owned (now in state failover), or false.
_CLAIM = (
    _COMMON
    + """
local P, w, leaving = ARGV[1], ARGV[2], ARGV[3]
local now = now_ms()
local dl = redis.call('ZSCORE', P .. ':workers', w)
if not dl then return false end
if leaving ~= '1' and tonumber(dl) > now then return false end
redis.call('ZREM', P .. ':workers', w)
local sids = redis.call('SMEMBERS', P .. ':owned:' .. w)
for _, sid in ipairs(sids) do
  local rk = P .. ':route:' .. sid
  if redis.call('HGET', rk, 'owner') == w then
    redis.call('HSET', rk, 'owner', '', 'active', '0', 'state', 'failover', 'failover_at', now)
    redis.call('SADD', P .. ':orphans:' .. redis.call('HGET', rk, 'pool'), sid)
  end
end
local pools = redis.call('HGET', P .. ':worker:' .. w, 'pools') or ''
for pool in string.gmatch(pools, '[^,]+') do redis.call('ZREM', P .. ':load:' .. pool, w) end
redis.call('DEL', P .. ':owned:' .. w, P .. ':wake:' .. w, P .. ':worker:' .. w)
return sids
"""
)

# ARGV: prefix, sid, failover grace ms ('0' = force: the claimer itself).
# Gives an orphan (or a failover whose claimer vanished) an owner; returns it or false.
_ADOPT = (
    _COMMON
    + """
local P, sid, grace = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local rk = P .. ':route:' .. sid
local r = redis.call('HMGET', rk, 'pool', 'state', 'failover_at')
if not r[1] then return false end
if r[2] == 'orphan' or (r[2] == 'failover' and now - tonumber(r[3] or 0) >= grace) then
  return assign(P, sid, r[1], now)
end
if r[2] ~= 'bound' and r[2] ~= 'closing' then
  redis.call('SADD', P .. ':orphans:' .. r[1], sid)
end
return false
"""
)

# ARGV: prefix, sid, worker, active ('1'/'0'). Returns the pool when w owns sid.
_SET_ACTIVE = """
local rk = ARGV[1] .. ':route:' .. ARGV[2]
local r = redis.call('HMGET', rk, 'owner', 'state', 'pool')
if r[1] ~= ARGV[3] or r[2] ~= 'bound' then return false end
redis.call('HSET', rk, 'active', ARGV[4])
return r[3]
"""

# ARGV: prefix, sid, worker, now (s, float), task id, order wait ms ('' = no order
# check). Checks ownership and the send order, takes the call out of the journal
# and refreshes the session data's TTL.
# Returns {'ok'|'missing'|'notmine'|'early', pool, earlier task id}.
_BEGIN_CALL = """
local P, sid, w, tid = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local r = redis.call('HMGET', P .. ':route:' .. sid, 'owner', 'state', 'pool')
if r[1] ~= w or r[2] ~= 'bound' then return {'notmine', r[3] or '', ''} end
local ck, ok = P .. ':calls:' .. sid, P .. ':order:' .. sid
local mine = redis.call('HGET', ck, tid)
if mine and ARGV[6] ~= '' then
  local seq = tonumber(string.match(mine, '^(%d+)|'))
  local t = redis.call('TIME')
  local since = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[6])
  for _, e in ipairs(redis.call('ZRANGEBYSCORE', ok, '-inf', '(' .. seq)) do
    local raw = redis.call('HGET', ck, e)
    if raw and tonumber(string.match(raw, '^%d+|(%d+)|')) > since then return {'early', r[3], e} end
    redis.call('ZREM', ok, e)  -- begun, dropped, or waited for long enough
  end
end
redis.call('HDEL', ck, tid)
redis.call('ZREM', ok, tid)
local dk = P .. ':session:' .. sid
local ttl = redis.call('HGET', dk, 'ttl')
if not ttl then return {'missing', r[3], ''} end
redis.call('EXPIRE', dk, tonumber(ttl))
redis.call('ZADD', P .. ':sessions', tonumber(ARGV[4]) + tonumber(ttl), sid)
return {'ok', r[3], ''}
"""

# ARGV: prefix, sid, worker, grace ms. Starts closing an expired session.
_EXPIRE_BEGIN = (
    _COMMON
    + """
local P, sid, w, grace = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local rk = P .. ':route:' .. sid
local r = redis.call('HMGET', rk, 'owner', 'state', 'routed_at')
if r[1] ~= w or r[2] ~= 'bound' then return 'notmine' end
if redis.call('EXISTS', P .. ':session:' .. sid) == 1 then return 'alive' end
if now_ms() - tonumber(r[3] or 0) < grace then return 'recent' end
redis.call('HSET', rk, 'state', 'closing', 'active', '0')
return 'closing'
"""
)

# ARGV: prefix, sid, worker. A closing session got a call after all: bound again.
_EXPIRE_ABORT = """
local rk = ARGV[1] .. ':route:' .. ARGV[2]
if redis.call('HGET', rk, 'owner') ~= ARGV[3] then return 0 end
redis.call('HSET', rk, 'state', 'bound', 'active', '0')
return 1
"""

# ARGV: prefix, sid, worker. Forgets a closed session entirely (or a session
# this worker lost), returning 1 if it removed the route.
_FORGET = """
local P, sid, w = ARGV[1], ARGV[2], ARGV[3]
local rk = P .. ':route:' .. sid
local r = redis.call('HMGET', rk, 'owner', 'pool', 'state')
redis.call('SREM', P .. ':owned:' .. w, sid)
if r[1] ~= w then return 0 end
redis.call('ZINCRBY', P .. ':load:' .. r[2], -1, w)
redis.call('DEL', rk, P .. ':calls:' .. sid, P .. ':order:' .. sid)
redis.call('SREM', P .. ':orphans:' .. r[2], sid)
if r[3] == 'closing' then redis.call('ZREM', P .. ':sessions', sid) end
return 1
"""


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
        self._route = reg(_ROUTE)
        self._heartbeat = reg(_HEARTBEAT)
        self._claim = reg(_CLAIM)
        self._adopt = reg(_ADOPT)
        self._set_active = reg(_SET_ACTIVE)
        self._begin = reg(_BEGIN_CALL)
        self._expire_begin = reg(_EXPIRE_BEGIN)
        self._expire_abort = reg(_EXPIRE_ABORT)
        self._forget = reg(_FORGET)
        self._live_pools = reg(_LIVE_POOLS)

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

    def journal(self, session_id: str) -> list[tuple[int, int, str, str]]:
        """Journaled calls not yet begun: (seq, routed at ms, task id, call JSON), oldest first."""
        entries = []
        for task_id, raw in self.redis.hgetall(self.key("calls", session_id)).items():
            seq, ms, call = _text(raw).split("|", 2)
            entries.append((int(seq), int(ms), _text(task_id), call))
        return sorted(entries)

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
        (:mod:`snakepit_celery.known_pools`).
        """
        reply = self._live_pools(args=[self.prefix])
        hosted: dict[str, list[str]] = {}
        for worker, pools in zip(reply[::2], reply[1::2], strict=True):
            for pool in _text(pools).split(","):
                if pool:
                    hosted.setdefault(pool, []).append(_text(worker))
        return hosted

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

    def adopt(self, session_id: str, *, grace_ms: int = 0) -> str | None:
        """Give an orphan (or a failover older than ``grace_ms``) a live owner."""
        owner = self._adopt(args=[self.prefix, session_id, grace_ms])
        return _text(owner) if owner else None

    def orphans(self, pool: str, count: int = 100) -> list[str]:
        """Some sessions of ``pool`` waiting for an owner."""
        return [_text(s) for s in self.redis.srandmember(self.key("orphans", pool), count)]

    def pop_wake(self, worker: str, timeout: float) -> tuple[str, str] | None:
        """Block up to ``timeout`` s for the next wake-up of ``worker``: (op, sid)."""
        item = self.redis.blpop([self.key("wake", worker)], timeout=timeout)
        if item is None:
            return None
        op, _, sid = _text(item[1]).partition(" ")
        return op, sid

    # -- owners ------------------------------------------------------------------

    def set_active(self, session_id: str, worker: str, active: bool) -> str | None:
        """Record whether ``worker`` consumes the session's queue; its pool, or
        None when ``worker`` does not own the session."""
        pool = self._set_active(args=[self.prefix, session_id, worker, "1" if active else "0"])
        return _text(pool) if pool else None

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
        for sid in sids:
            self.adopt(sid)
        return sids

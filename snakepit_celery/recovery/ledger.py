"""One worker's record of the pool calls it holds, in the snakepit Redis.

Keys (``<p>`` is the queue prefix, ``<w>`` the worker id of the session lease)::

    <p>:taken:<w>    hash  task id -> delivery tag ('' on RabbitMQ): pool messages w holds
    <p>:call:<tid>   hash  {run: worker that began it, deaths: dead workers that held it,
                            reruns: times an idempotent call was begun again}
    <p>:restored:<w> zset  delivery tag -> ms: Redis-broker messages put back in their
                           queues when w was declared dead; if w was only stalled, it must
                           not run its own copies of them (the message put back keeps its
                           tag, so only w checks this set, once per tag)

Writing costs one command per call, on the call's own thread, before the
bridge sees it: that record is what tells "began" from "never began" after a
death, so it cannot be written behind. A redelivered message waits for the
script's verdict (:meth:`CallLedger.begin`). A first delivery, on a worker
whose lease is surely live, cannot have a verdict other than "ok" (only a
death or a declared death gives a call a history), so its record is sent and
the call goes on without waiting for the answer (:meth:`CallLedger.begin_behind`):
the command is in the socket before the bridge hears of the call, so a death
after it finds the record; the answer is read when the call is over. What a
worker has merely received, and what it has finished, is written behind by a
flusher thread, in one pipeline per tick: a death before the flush loses
nothing, because the claimer also puts back any old unacknowledged pool
message that no live worker holds (see the housekeeper).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.exceptions import NoScriptError

__all__ = ["POOL_TASKS", "CallLedger"]

log = logging.getLogger(__name__)

#: The tasks whose messages travel on pool queues and are recovered after a death.
POOL_TASKS = frozenset({"snakepit.execute", "snakepit.execute_stream", "snakepit.execute_batch"})

#: Seconds a call's record lives while it runs (a backstop; it is shortened at the end).
RUNNING_TTL = 86_400
#: Seconds a finished call's record stays: a copy of its message redelivered
#: within it (its ack was lost) is recognised and not run again.
FINISHED_TTL = 600
#: Seconds between two writes of the flusher.
FLUSH_INTERVAL = 0.1
#: Writes kept while Redis is unreachable; past it the oldest go (the claimer's
#: scan of unacknowledged messages still finds what they described).
MAX_PENDING = 100_000
#: Milliseconds a restored tag is remembered: far longer than any stall a
#: worker survives with its process (past it the tag's message is long gone).
RESTORED_KEEP_MS = 3_600_000

# ARGV: prefix, worker, task id, delivery tag ('' = none), idempotent ('1'/'0'),
# max deliveries, ttl.  Returns {verdict, detail}: ok | rerun <first runner> |
# mine | stale | lost <runner> | poison <deaths>.
_BEGIN = """
local P, w, tid, tag = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local idem, max_deaths, ttl = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
if tag ~= '' and redis.call('ZREM', P .. ':restored:' .. w, tag) == 1 then return {'stale', ''} end
local ck = P .. ':call:' .. tid
local r = redis.call('HMGET', ck, 'run', 'deaths', 'reruns')
if r[1] == w then return {'mine', w} end
if r[1] then
  if idem == '1' and tonumber(r[3] or '0') < 1 then
    redis.call('HSET', ck, 'run', w, 'reruns', 1)
    redis.call('EXPIRE', ck, ttl)
    redis.call('HSET', P .. ':taken:' .. w, tid, tag)
    return {'rerun', r[1]}
  end
  return {'lost', r[1]}
end
local deaths = tonumber(r[2] or '0')
if deaths >= max_deaths then return {'poison', tostring(deaths)} end
redis.call('HSET', ck, 'run', w)
redis.call('EXPIRE', ck, ttl)
redis.call('HSET', P .. ':taken:' .. w, tid, tag)
return {'ok', ''}
"""

# ARGV: prefix, dead worker, now (ms), ttl.  Counts a death against every call
# the dead worker held, marks its delivery tags restored, forgets what it held;
# returns the tags (Redis broker) to put back.
_RECOVER = """
local P, w, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local tk = P .. ':taken:' .. w
local flat = redis.call('HGETALL', tk)
local tags = {}
for i = 1, #flat, 2 do
  local ck = P .. ':call:' .. flat[i]
  redis.call('HINCRBY', ck, 'deaths', 1)
  redis.call('EXPIRE', ck, ttl)
  if flat[i + 1] ~= '' then
    redis.call('ZADD', P .. ':restored:' .. w, now, flat[i + 1])
    tags[#tags + 1] = flat[i + 1]
  end
end
redis.call('DEL', tk)
if #tags > 0 then redis.call('PEXPIRE', P .. ':restored:' .. w, tonumber(ARGV[5])) end
return tags
"""

# ARGV: prefix, now (ms), ttl, then task id, tag pairs: unacknowledged pool
# messages old enough to have been recorded by their holder.  Returns the tags
# of those no live worker holds (a death is counted against each).
_UNHELD = """
local P, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local live = redis.call('ZRANGEBYSCORE', P .. ':workers', now, '+inf')
local out = {}
for i = 4, #ARGV, 2 do
  local tid, tag = ARGV[i], ARGV[i + 1]
  local held = false
  for _, w in ipairs(live) do
    if redis.call('HEXISTS', P .. ':taken:' .. w, tid) == 1 then held = true; break end
  end
  if not held then
    redis.call('HINCRBY', P .. ':call:' .. tid, 'deaths', 1)
    redis.call('EXPIRE', P .. ':call:' .. tid, ttl)
    out[#out + 1] = tag
  end
end
return out
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class CallLedger:
    """The pool calls one worker holds, as its survivors will need to know them.

    Thread-safe: the consumer thread records receipts, the pool's threads
    begin and finish calls, the housekeeper recovers dead workers.

    Args:
        client: a ``redis.Redis`` of the snakepit Redis (the one holding the leases).
        prefix: the queue prefix.
        worker_id: this worker's lease id.
        max_deliveries: dead workers that may hold a call before it is refused.
    """

    def __init__(self, client: Any, prefix: str, worker_id: str, *, max_deliveries: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.worker_id = worker_id
        self.max_deliveries = max_deliveries
        #: The start of every pool queue's name (``<prefix>.pool.<name>``).
        self.pool_queue_prefix = f"{prefix}.pool."
        self._begin = client.register_script(_BEGIN)
        self._recover = client.register_script(_RECOVER)
        self._unheld = client.register_script(_UNHELD)
        #: Task id -> delivery tag of the pool messages held here ('' on RabbitMQ).
        self._held: dict[str, str] = {}
        #: Task id -> copies of its message received here and not yet finished: a
        #: message redelivered to its own holder (RabbitMQ after a reconnection) stays
        #: held, and checked, until the last copy is over.
        self._copies: dict[str, int] = {}
        #: Task ids of the held calls whose record says they began here.
        self._begun: set[str] = set()
        self._lock = threading.Lock()
        self._pending: deque[tuple[str, str, str]] = deque(maxlen=MAX_PENDING)
        #: Monotonic time until which no other worker can have declared this one dead.
        self._sure_until = 0.0
        #: Task ids held when this worker learnt it had been declared dead: their
        #: messages may have been put back for others, so each waits for its verdict.
        self._suspect: set[str] = set()
        self._local = threading.local()
        #: The threads' own connections (see :meth:`_connection`), closed at stop.
        self._connections: list[Any] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # -- life --------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._flush_loop, name="snakepit-ledger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the flusher and forget what this worker held.

        Called on a warm shutdown once the unrun messages are back in their
        queues: nothing held here is left for a survivor to recover.
        """
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            self.flush()  # the ends of the last calls: their records then expire soon
        except Exception as exc:
            log.debug("snakepit: call ledger: last flush failed: %s", exc)
        with self._lock:
            self._held.clear()
            self._copies.clear()
            self._begun.clear()
            self._suspect.clear()
            self._pending.clear()
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.disconnect()
        try:
            self.redis.delete(self.key("taken", self.worker_id))
        except Exception as exc:  # its lease lapses; the claimer finds nothing to put back
            log.warning("snakepit: could not clear this worker's call ledger: %s", exc)

    # -- this worker ---------------------------------------------------------------

    def received(self, task_id: str, routing_key: str, tag: str) -> None:
        """A message arrived (consumer thread): record it if it came from a pool queue."""
        if not task_id or not routing_key.startswith(self.pool_queue_prefix):
            return
        with self._lock:
            self._held[task_id] = tag
            self._copies[task_id] = self._copies.get(task_id, 0) + 1
            self._pending.append(("add", task_id, tag))
        self._wake.set()

    def holds(self, task_id: str) -> str | None:
        """The delivery tag of a pool message held here, None if it is not one."""
        with self._lock:
            return self._held.get(task_id)

    def held_tags(self) -> list[str]:
        """Delivery tags of the messages held here (Redis broker), for their refresh."""
        with self._lock:
            return [tag for tag in self._held.values() if tag]

    def lease_renewed(self, sent_at: float, lease_ttl: float) -> None:
        """The worker's lease was renewed by a heartbeat sent at ``sent_at`` (monotonic).

        No survivor can claim this worker before the lease lapses; half of it
        leaves room for the clocks and for the heartbeat's own trip.
        """
        self._sure_until = sent_at + lease_ttl / 2

    def declared_dead(self) -> None:
        """This worker was declared dead (it stalled) and registers again: the
        messages it holds now wait for their verdicts."""
        with self._lock:
            self._suspect.update(self._held)
        self._sure_until = 0.0

    def lease_sure(self) -> bool:
        """Whether this worker surely still holds its lease (so nothing it holds was put back)."""
        return time.monotonic() < self._sure_until

    def begin_behind(
        self, task_id: str, tag: str, *, idempotent: bool
    ) -> Callable[[], tuple[str, str]] | None:
        """Send the record that the call begins here, without waiting for the verdict.

        Only for a first delivery on a worker whose lease is surely live (see the
        module's docstring); None when the lease is not sure or the command could
        not be sent (then :meth:`begin` decides). The returned function reads the
        verdict; it must be called once, when the call is over (or at once, when
        the lease stopped being sure meanwhile).

        Raises:
            redis.RedisError: reading the verdict failed (the record may be missing).
        """
        if not self.lease_sure():
            return None
        with self._lock:
            if task_id in self._suspect:
                return None
        connection = self._connection()
        args = self._begin_args(task_id, tag, idempotent)
        try:  # by its digest: the connection loaded the script when it connected
            connection.send_command("EVALSHA", self._begin.sha, 0, *args, check_health=False)
        except Exception as exc:
            log.debug("snakepit: call ledger: begin not sent: %s", exc)
            connection.disconnect()
            return None
        with self._lock:
            self._begun.add(task_id)

        def verdict() -> tuple[str, str]:
            try:
                found, detail = (_text(v) for v in connection.read_response())
            except NoScriptError:  # flushed since it connected: the record is written now, late
                connection.disconnect()  # the next call connects again, and loads it again
                log.warning("snakepit: call ledger: its script was flushed from Redis; loaded again")
                return self.begin(task_id, tag, idempotent=idempotent)
            except BaseException:
                connection.disconnect()  # the next call connects again
                raise
            if found not in ("ok", "rerun"):
                with self._lock:
                    self._begun.discard(task_id)
            return found, detail

        return verdict

    def _connection(self) -> Any:
        """This thread's own connection to the ledger's Redis, for :meth:`begin_behind`.

        Not one lent by the client's pool: a pool checks every connection it lends
        for unread data, a few system calls that cost more than the command itself
        on a small VM. Each pool thread sends and reads one command at a time on it.
        """
        connection = getattr(self._local, "connection", None)
        if connection is None:
            pool = self.redis.connection_pool
            connection = pool.connection_class(**pool.connection_kwargs)
            connection.register_connect_callback(self._load_begin)  # a method: kept weakly
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def _load_begin(self, connection: Any) -> None:
        """Load the begin script on a thread's connection as it connects (again after a
        Redis restart): each call's record then carries the script's digest, not its
        text, and a script loaded so stays where Redis 7.4 may evict one EVAL sent."""
        connection.send_command("SCRIPT", "LOAD", _BEGIN, check_health=False)
        connection.read_response()

    def _begin_args(self, task_id: str, tag: str, idempotent: bool) -> list[Any]:
        return [
            self.prefix,
            self.worker_id,
            task_id,
            tag,
            "1" if idempotent else "0",
            self.max_deliveries,
            RUNNING_TTL,
        ]

    def begin(self, task_id: str, tag: str, *, idempotent: bool) -> tuple[str, str]:
        """Record that the call begins here, unless it must not: the verdict.

        Returns:
            ``(verdict, detail)``: ``ok`` (run it), ``rerun`` (an idempotent call
            another worker began and lost; detail names it), ``mine`` (this worker
            already began it), ``stale`` (put back for another worker while this one
            stalled), ``lost`` (began on the worker named in detail, not idempotent),
            ``poison`` (held by ``detail`` dead workers).

        Raises:
            redis.RedisError: the ledger is unreachable.
        """
        verdict, detail = (_text(v) for v in self._begin(args=self._begin_args(task_id, tag, idempotent)))
        if verdict in ("ok", "rerun"):
            with self._lock:
                self._begun.add(task_id)
        return verdict, detail

    def finished(self, task_id: str) -> None:
        """A held call is over (ran, failed, was refused or revoked); written behind."""
        with self._lock:
            copies = self._copies.get(task_id, 0) - 1
            if copies > 0:
                self._copies[task_id] = copies
                return
            self._copies.pop(task_id, None)
            self._suspect.discard(task_id)
            if self._held.pop(task_id, None) is None:
                return
            began = task_id in self._begun
            self._begun.discard(task_id)
            self._pending.append(("done" if began else "drop", task_id, ""))
        self._wake.set()

    # -- the dead ------------------------------------------------------------------

    def recover(self, worker: str) -> list[str]:
        """Take over what a dead worker held (its claimer only): count a death
        against each call and return the delivery tags to put back (Redis broker)."""
        now = self._now_ms()
        tags = self._recover(args=[self.prefix, worker, now, RUNNING_TTL, RESTORED_KEEP_MS])
        return [_text(t) for t in tags]

    def unheld(self, candidates: list[tuple[str, str]]) -> list[str]:
        """Of old unacknowledged pool messages ``(task id, tag)``, the tags no live
        worker holds: a worker died before it recorded them (or, with the ledger
        unreachable from it for half a lease, a live one holds them unrecorded)."""
        if not candidates:
            return []
        flat = [part for pair in candidates for part in pair]
        tags = self._unheld(args=[self.prefix, self._now_ms(), RUNNING_TTL, *flat])
        return [_text(t) for t in tags]

    def _now_ms(self) -> int:
        seconds, micros = self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- writing behind ------------------------------------------------------------

    def _flush_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            if self._stopping.wait(FLUSH_INTERVAL):
                return
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # kept; written when Redis is back
                log.warning("snakepit: call ledger not written yet: %s", exc)
                self._wake.set()
                self._stopping.wait(1.0)

    def flush(self) -> None:
        """Write the receipts and ends recorded since the last flush (one pipeline)."""
        with self._lock:
            ops = list(self._pending)
            self._pending.clear()
        if not ops:
            return
        taken = self.key("taken", self.worker_id)
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for op, task_id, tag in ops:
                    if op == "add":
                        pipe.hset(taken, task_id, tag)
                        continue
                    pipe.hdel(taken, task_id)
                    if op == "done":  # the record is this worker's run: keep it a while only
                        pipe.expire(self.key("call", task_id), FINISHED_TTL)
                pipe.execute()
        except Exception:
            with self._lock:  # keep them, oldest first, ahead of newer ones
                self._pending.extendleft(reversed(ops))
            raise

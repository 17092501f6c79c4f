"""The session store: a session's data (metadata, programs) in Redis with a TTL.

The data outlives any one worker or bridge: when a session's owner dies, the
worker that takes it over rebuilds the bridge's state from what is stored
here. Every read refreshes the TTL (one Lua call, so the data and its expiry
never disagree); every write is an optimistic WATCH/MULTI transaction, so two
workers racing on one session never lose an update.

Keys (``<p>`` is the queue prefix)::

    <p>:session:<id>     hash {doc: JSON, ttl: seconds}, expires after ttl
    <p>:sessions         sorted set id -> expiry time (listing and cleanup)
    <p>:programs         hash name -> JSON (global programs, no expiry)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from kombu.utils import json

from snakepit_celery.config import DEFAULT_QUEUE_PREFIX
from snakepit_celery.errors import ConfigurationError, SessionError, SessionNotFound
from snakepit_celery.sessions.ids import validate_session_id

__all__ = ["DEFAULT_SESSION_TTL", "SessionStore"]

#: Seconds an idle session lives, as in the seed (one hour).
DEFAULT_SESSION_TTL = 3600
#: How often a write transaction is retried when another writer got there first.
_MAX_TX_RETRIES = 50

# KEYS: session hash, index.  ARGV: session id, now.  Returns the doc or nil.
_TOUCH = """
local doc = redis.call('HGET', KEYS[1], 'doc')
if not doc then return false end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl'))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + ttl, ARGV[1])
return doc
"""

# KEYS: session hash, index.  ARGV: session id, now.  1 if the session exists (TTL
# restarted), 0 if not. As _TOUCH without reading the doc, which may be large.
_REFRESH = """
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl'))
if not ttl then return 0 end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + ttl, ARGV[1])
return 1
"""

# KEYS: session hash, index.  ARGV: session id, doc, ttl, now.  1 if created.
# One script, so a session never exists without its TTL or its index entry.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'ttl', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[3]), ARGV[1])
return 1
"""

# KEYS: session hash, index.  ARGV: session id.  1 if it was expired and is forgotten
# (checked and removed at once, so a session created again meanwhile keeps its entry).
_FORGET_EXPIRED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

Session = dict[str, Any]


def _dumps(value: Any) -> str:
    # kombu's JSON, as Celery's serializer: bytes and datetimes round-trip.
    return str(json.dumps(value))  # type: ignore[no-untyped-call]


def _new_doc(session_id: str, ttl: int, metadata: dict[str, Any] | None, now: float) -> Session:
    return {
        "id": session_id,
        "created_at": now,
        "last_accessed": now,
        "ttl": ttl,
        "metadata": dict(metadata or {}),
        "programs": {},
    }


def _loads(raw: bytes | str) -> Any:
    return json.loads(raw)  # type: ignore[no-untyped-call]


class SessionStore:
    """Sessions and global programs in Redis.

    Args:
        redis_url: a ``redis://`` URL, or an existing ``redis.Redis`` client.
        prefix: the queue prefix the workers use (keys start with it).
        default_ttl: seconds an idle session lives when ``create_session`` is
            given no ``ttl``.

    Example::

        store = SessionStore("redis://localhost:6379/0")
        store.create_session("user_123", ttl=7200)
        store.store_program("user_123", "prog_1", {"model": "gpt-4"})
    """

    def __init__(
        self,
        redis_url: str | redis.Redis,
        *,
        prefix: str = DEFAULT_QUEUE_PREFIX,
        default_ttl: int = DEFAULT_SESSION_TTL,
    ) -> None:
        if isinstance(redis_url, str):
            if not redis_url.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigurationError(
                    f"redis_url: {redis_url!r} is not a redis://, rediss:// or unix:// URL"
                )
            client = redis.Redis.from_url(redis_url)
        else:
            client = redis_url
        #: The Redis client (redis-py's own types are too loose to be useful here).
        self.redis: Any = client
        if default_ttl <= 0:
            raise ConfigurationError(f"default_ttl: {default_ttl!r} must be > 0")
        self.prefix = prefix
        self.default_ttl = int(default_ttl)
        self._index = f"{prefix}:sessions"
        self._programs = f"{prefix}:programs"
        self._touch = self.redis.register_script(_TOUCH)
        self._refresh = self.redis.register_script(_REFRESH)
        self._create = self.redis.register_script(_CREATE)
        self._forget_expired = self.redis.register_script(_FORGET_EXPIRED)

    def _key(self, session_id: str) -> str:
        return f"{self.prefix}:session:{validate_session_id(session_id)}"

    # -- sessions ----------------------------------------------------------------

    def create_session(
        self, session_id: str, *, ttl: int | None = None, metadata: dict[str, Any] | None = None
    ) -> Session:
        """Create a session, or return the existing one unchanged (TTL refreshed).

        Raises:
            InvalidSessionId: the id is unfit for a key.
            SessionError: ``ttl`` is not a positive number of seconds.
        """
        key = self._key(session_id)
        ttl = self.default_ttl if ttl is None else int(ttl)
        if ttl <= 0:
            raise SessionError(f"ttl of session {session_id!r} must be > 0 seconds, not {ttl}")
        now = time.time()
        doc = _new_doc(session_id, ttl, metadata, now)
        created = self._create(keys=[key, self._index], args=[session_id, _dumps(doc), ttl, now])
        if not created:
            existing = self.get_session(session_id)
            if existing is not None:
                return existing
            return self.create_session(session_id, ttl=ttl, metadata=metadata)  # expired meanwhile
        return doc

    def ensure_sessions(self, session_ids: list[str]) -> None:
        """Create these sessions with the default TTL, or restart the TTL of those
        that exist, in two round trips (a worker binding many sessions at once)."""
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                doc = _new_doc(session_id, self.default_ttl, None, now)
                args: list[Any] = [session_id, _dumps(doc), self.default_ttl, now]
                self._create(keys=[self._key(session_id), self._index], args=args, client=pipe)
            created = pipe.execute()
        self.keep_alive([sid for sid, made in zip(session_ids, created, strict=True) if not made])

    def get_session(self, session_id: str) -> Session | None:
        """The session's data, or None when it does not exist; refreshes its TTL."""
        raw = self._touch(keys=[self._key(session_id), self._index], args=[session_id, time.time()])
        return None if raw is None else dict(_loads(raw))

    def keep_alive(self, session_ids: Iterable[str]) -> list[str]:
        """Restart the TTL of these sessions, in one round trip; returns those that exist.

        A worker calls this for the sessions that have a call running, so that
        a call longer than the TTL neither loses the session's data under it
        nor leaves it expiring as soon as it ends: a session's idle time starts
        when its last call ends.
        """
        ids = list(session_ids)
        if not ids:
            return []
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            for session_id in ids:
                self._refresh(keys=[self._key(session_id), self._index], args=[session_id, now], client=pipe)
            found = pipe.execute()
        return [session_id for session_id, ok in zip(ids, found, strict=True) if ok]

    def session_exists(self, session_id: str) -> bool:
        """Whether the session exists (does not refresh its TTL)."""
        return bool(self.redis.exists(self._key(session_id)))

    def update_session(self, session_id: str, fn: Callable[[Session], Session | None]) -> Session:
        """Apply ``fn`` to the session's data atomically and store what it returns.

        ``fn`` may return a new dict or change the one given and return None.
        It may run more than once when another writer races this one.

        Raises:
            SessionNotFound: no such session (or it expired).
        """
        key = self._key(session_id)
        for _ in range(_MAX_TX_RETRIES):
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    raw, ttl = pipe.hmget(key, ["doc", "ttl"])
                    if raw is None:
                        raise SessionNotFound(f"session {session_id!r} does not exist or has expired")
                    doc = dict(_loads(raw))
                    changed = fn(doc)
                    new = doc if changed is None else dict(changed)
                    new["id"] = session_id
                    new["last_accessed"] = time.time()
                    pipe.multi()
                    pipe.hset(key, "doc", _dumps(new))
                    pipe.expire(key, int(ttl))
                    pipe.zadd(self._index, {session_id: time.time() + int(ttl)})
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue
        raise SessionError(f"session {session_id!r}: gave up after {_MAX_TX_RETRIES} conflicting writes")

    def delete_session(self, session_id: str) -> bool:
        """Delete the session's data; False when there was none."""
        key = self._key(session_id)
        with self.redis.pipeline() as pipe:
            pipe.delete(key)
            pipe.zrem(self._index, session_id)
            deleted, _ = pipe.execute()
        return bool(deleted)

    def list_sessions(self) -> list[str]:
        """Ids of the sessions that have not expired."""
        ids = self.redis.zrangebyscore(self._index, time.time(), "+inf")
        return sorted(i.decode() for i in ids)

    def cleanup_expired_sessions(self) -> list[str]:
        """Forget sessions whose data has expired; returns their ids.

        Redis drops the data itself when the TTL passes; this removes them
        from the index, and the ids tell a worker which queues to delete.
        """
        candidates = [i.decode() for i in self.redis.zrangebyscore(self._index, "-inf", time.time())]
        return [
            session_id
            for session_id in candidates
            if self._forget_expired(keys=[self._key(session_id), self._index], args=[session_id])
        ]

    # -- programs ------------------------------------------------------------------

    def store_program(self, session_id: str, program_id: str, program: Any) -> None:
        """Store a program (its spec) in the session, for the bridge to rebuild it."""

        def put(doc: Session) -> None:
            doc.setdefault("programs", {})[program_id] = program

        self.update_session(session_id, put)

    def get_program(self, session_id: str, program_id: str) -> Any:
        """A program of the session, or None when the session has no such program."""
        doc = self.get_session(session_id)
        if doc is None:
            raise SessionNotFound(f"session {session_id!r} does not exist or has expired")
        return doc.get("programs", {}).get(program_id)

    def store_global_program(self, program_id: str, program: Any) -> None:
        """Store a program every session and worker can read; it never expires."""
        self.redis.hset(self._programs, program_id, _dumps(program))

    def get_global_program(self, program_id: str) -> Any:
        """A global program, or None."""
        raw = self.redis.hget(self._programs, program_id)
        return None if raw is None else _loads(raw)

    def get_stats(self) -> dict[str, int]:
        """Counts: live sessions, expired ones not yet cleaned up, global programs."""
        now = time.time()
        with self.redis.pipeline() as pipe:
            pipe.zcount(self._index, now, "+inf")
            pipe.zcount(self._index, "-inf", now)
            pipe.hlen(self._programs)
            live, stale, programs = pipe.execute()
        return {"sessions": int(live), "expired_pending": int(stale), "global_programs": int(programs)}

"""Where big payloads wait: keys ``<prefix>:payload:<uuid>`` in the snakepit Redis, with a TTL.

One :class:`PayloadStore` per installed app, made on first use from the app's
config (``payload_ref_threshold``, ``payload_ref_ttl``, ``queue_prefix``) and
:func:`~snakepit_celery.appconfig.resolve_redis_url`. An app with no Redis, or with
the threshold at 0, has no store: its bytes stay inside the messages, as
before. A reference names its key, and the key its prefix, so whoever reads a
reference finds the store of the app it belongs to, even in a process that
holds several apps (a test's callers, say).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis
from celery import Celery

from snakepit_celery.errors import ConfigurationError, PayloadExpired

__all__ = ["KEY_PART", "PayloadStore", "expired", "prefix_of", "store_for_app", "store_for_prefix"]

log = logging.getLogger(__name__)

#: The part of a payload key after the prefix: ``<prefix>:payload:<uuid>``.
KEY_PART = ":payload:"
#: Replies at least this large in all are followed by a PING (see ``PayloadStore._let_go``).
_BIG_READ = 1024 * 1024


@dataclass(frozen=True)
class PayloadStore:
    """The payloads of one app: Redis, key prefix, threshold, TTL."""

    client: redis.Redis
    prefix: str
    #: A bytes value longer than this is stored (always > 0 here).
    threshold: int
    #: Seconds a payload nobody reads is kept.
    ttl: int
    #: ``max_payload_bytes`` of each pool the app's config has.
    limits: Mapping[str, int]

    def limit(self, pool: object) -> int:
        """The size limit of ``pool``'s calls; a pool the config lacks: the largest there is."""
        if isinstance(pool, str) and pool in self.limits:
            return self.limits[pool]
        return max(self.limits.values())

    def new_key(self) -> str:
        return f"{self.prefix}{KEY_PART}{uuid.uuid4().hex}"

    def put(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store each ``(key, data)`` with the TTL, in one round trip.

        Each value goes as a memoryview: redis-py then sends the bytes as they
        are, where with hiredis it would pack each command into a copy first
        (two, for a moment: hiredis's buffer and the bytes made of it).
        """
        with self.client.pipeline(transaction=False) as pipe:
            for key, data in items:
                pipe.set(key, memoryview(data), ex=self.ttl)
            pipe.execute()

    def get(self, keys: Sequence[str]) -> list[bytes | None]:
        """The payloads of ``keys`` (None for a key that is gone), left in place."""
        values: list[bytes | None] = self.client.mget(keys) if keys else []  # type: ignore[assignment]
        self._let_go(values)
        return values

    def take(self, keys: Sequence[str]) -> list[bytes | None]:
        """The payloads of ``keys`` (None for one that is gone), deleted as they are read."""
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.getdel(key)
            values = list(pipe.execute())
        self._let_go(values)
        return values

    def _let_go(self, values: Sequence[bytes | None]) -> None:
        """Make the connection that read ``values`` free its read buffer, if they were big.

        hiredis keeps its buffer, as large as the reply it last read, until
        the connection reads again: a 50 MiB payload would be held twice, for
        the whole call it is for. A PING is that read; the pool hands out the
        connection given back last, so it is the same one (if another thread
        took it meanwhile, that thread's command does the same).
        """
        if sum(len(v) for v in values if v is not None) >= _BIG_READ:
            with contextlib.suppress(redis.RedisError):  # else the buffer goes with the next command
                self.client.ping()

    def delete(self, keys: Sequence[str]) -> None:
        if keys:
            self.client.delete(*keys)


def prefix_of(key: str) -> str:
    """The queue prefix of a payload key."""
    return key.split(KEY_PART, 1)[0]


def expired(key: str, size: int) -> PayloadExpired:
    return PayloadExpired(
        f"the {size}-byte payload {key} is gone from the snakepit Redis: its result was read "
        "already, or nobody read it within payload_ref_ttl seconds; send the call again"
    )


_stores: weakref.WeakKeyDictionary[Celery, PayloadStore | None] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def store_for_app(app: Celery) -> PayloadStore | None:
    """The store of ``app`` (made once), or None: no Redis, or payloads by reference turned off."""
    from snakepit_celery.appconfig import config_for, resolve_redis_url

    with _lock:
        if app in _stores:
            return _stores[app]
        store = None
        try:
            config = config_for(app)
            if config.payload_ref_threshold > 0:
                client = redis.Redis.from_url(resolve_redis_url(app, config))
                limits = {p.name: p.max_payload_bytes for p in config.pools}
                threshold, ttl = config.payload_ref_threshold, config.payload_ref_ttl
                store = PayloadStore(client, config.queue_prefix, threshold, ttl, limits)
        except ConfigurationError as exc:
            log.info("snakepit: big bytes stay inside the messages (no payload store): %s", exc)
        _stores[app] = store
        return store


def store_for_prefix(prefix: str, apps: Sequence[Celery], pool: object = None) -> PayloadStore | None:
    """The store of whichever of ``apps`` uses queue prefix ``prefix``; of several, one whose
    config has pool ``pool``."""
    found = None
    for app in apps:
        store = store_for_app(app)
        if store is not None and store.prefix == prefix:
            if pool in store.limits:
                return store
            found = found or store
    return found

"""Which pools a caller may send to: its own config's, and those a live worker hosts.

A message for a pool nobody hosts goes to a queue no worker reads, and its
caller waits for its whole timeout. So sending checks the pool first
(:func:`check_pool`, called by :meth:`snakepit_celery.integration.tasks.PoolTask.apply_async`,
which every way of sending goes through) and a typo fails at once with
:class:`~snakepit_celery.errors.PoolNotFound`, naming the pool, the pools there
are, and the closest one ("did you mean 'python'?").

Where the pools come from, cheapest first:

* the caller's config: a pool it names is accepted with no I/O at all (the
  common case costs nothing per send). It need not have a live worker right
  now: one may be starting (``stream()`` says so within seconds instead, see
  :mod:`snakepit_celery.streaming.pending`);
* the live workers' registry the session machinery keeps in the snakepit Redis
  (``<prefix>:workers`` and ``<prefix>:worker:<w>``, see
  :mod:`snakepit_celery.sessions.lease`; its read, :data:`LIVE_POOLS`, is here
  so that sending needs nothing of the sessions): a pool only a worker's config has (a
  caller whose config lacks the ``gpu`` pool, a worker that hosts it) is
  accepted while that worker's lease is live. One Lua call answers for every
  pool; the answer is kept :data:`HIT_TTL` seconds for pools found in it and
  :data:`MISS_TTL` seconds for pools missing from it, so a worker that just
  started is seen within a second;
* with no Redis configured at all (no ``SNAKEPIT_REDIS_URL``, neither result
  backend nor broker on Redis), the config alone: a pool outside it is refused.
"""

from __future__ import annotations

import difflib
import threading
import time
from typing import Any

import redis
from celery import Celery

from snakepit_celery.appconfig import resolve_redis_url
from snakepit_celery.config import SnakepitConfig
from snakepit_celery.errors import ConfigurationError, PoolNotFound

__all__ = ["HIT_TTL", "LIVE_POOLS", "MISS_TTL", "check_pool", "hosted_pools", "live_pools", "unknown_pool"]

#: Seconds the live workers' pools are trusted for a pool found among them.
HIT_TTL = 5.0
#: Seconds a pool missing from the live workers' pools is refused without asking Redis again.
MISS_TTL = 1.0
#: Socket timeout of the registry lookup: a Redis that does not answer fails the send, not hangs it.
LOOKUP_TIMEOUT = 2.0

_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}
#: (redis url, prefix) -> (monotonic time read, pool -> live worker ids).
_cache: dict[tuple[str, str], tuple[float, dict[str, list[str]]]] = {}


def check_pool(app: Celery, config: SnakepitConfig, pool: str) -> None:
    """Refuse a pool that neither ``config`` nor any live worker knows.

    Args:
        app: the sending app (its Redis holds the live workers' registry).
        config: the sender's snakepit config.
        pool: the pool the message is for.

    Raises:
        PoolNotFound: no such pool; the message names it, lists the pools
            there are and suggests the closest.
    """
    for known in config.pools:
        if known.name == pool:
            return  # NOTE: the common case: no Redis round trip
    configured = [p.name for p in config.pools]
    try:
        url = resolve_redis_url(app, config)
    except ConfigurationError:
        raise unknown_pool(
            pool, configured, {}, note="no Redis is configured to ask the live workers"
        ) from None
    try:
        hosted = live_pools(url, config.queue_prefix, want=pool)
    except redis.RedisError as exc:  # nothing proves the pool exists: refuse it, saying why
        note = f"the live workers' pools could not be read from Redis: {type(exc).__name__}: {exc}"
        raise unknown_pool(pool, configured, {}, note=note) from None
    if pool not in hosted:
        raise unknown_pool(pool, configured, hosted)


def live_pools(url: str, prefix: str, *, want: str | None = None) -> dict[str, list[str]]:
    """The pools the live workers of ``prefix`` host: pool -> worker ids (a short-lived cache).

    Args:
        url: the snakepit Redis (:func:`~snakepit_celery.appconfig.resolve_redis_url`).
        prefix: the queue prefix.
        want: the pool the caller looks for: a kept answer that lacks it is
            reused for :data:`MISS_TTL` s only, one that has it for :data:`HIT_TTL` s.

    Raises:
        redis.RedisError: Redis did not answer (within :data:`LOOKUP_TIMEOUT` s).
    """
    now = time.monotonic()
    kept = _cache.get((url, prefix))
    if kept is not None:
        age = now - kept[0]
        if age < (HIT_TTL if want is None or want in kept[1] else MISS_TTL):
            return kept[1]
    hosted = hosted_pools(_client(url).register_script(LIVE_POOLS)(args=[prefix]))
    _cache[(url, prefix)] = (time.monotonic(), hosted)
    return hosted


def unknown_pool(
    pool: str, configured: list[str], hosted: dict[str, list[str]], *, note: str = ""
) -> PoolNotFound:
    """The error for an unknown ``pool``: names it, the pools there are, and the closest one.

    Args:
        pool: the pool asked for.
        configured: the caller's config's pools, in order.
        hosted: pool -> live workers hosting it.
        note: why the live workers were not consulted, if they were not.

    Example::

        str(unknown_pool("pyhton", ["python"], {"python": ["w1"], "gpu": ["w2"]}))
        # no pool named 'pyhton': did you mean 'python'? pools there are:
        # python (config, 1 live worker), gpu (1 live worker)
    """
    names = configured + sorted(set(hosted) - set(configured))
    close = difflib.get_close_matches(pool, names, n=1)
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    listed = ", ".join(
        _describe(name, name in configured, len(hosted.get(name, ())), bool(note)) for name in names
    )
    message = f"no pool named {pool!r}: {suggestion}pools there are: {listed or 'none'}"
    return PoolNotFound(f"{message} ({note})" if note else message)


def _describe(name: str, configured: bool, workers: int, unknown_workers: bool) -> str:
    where = ["config"] if configured else []
    if not unknown_workers:
        where.append("no live worker" if workers == 0 else f"{workers} live worker{'s' * (workers != 1)}")
    return f"{name} ({', '.join(where)})"


def _client(url: str) -> redis.Redis:
    with _lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = redis.Redis.from_url(
                url, socket_timeout=LOOKUP_TIMEOUT, socket_connect_timeout=LOOKUP_TIMEOUT
            )
        return client


# ARGV: prefix. Read-only: {worker, pools csv, ...} of every worker whose lease is live.
LIVE_POOLS = """
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


def hosted_pools(reply: list[Any]) -> dict[str, list[str]]:
    """Pool -> worker ids, from the reply of :data:`LIVE_POOLS` (sync or asyncio client alike)."""
    hosted: dict[str, list[str]] = {}
    for worker, pools in zip(reply[::2], reply[1::2], strict=True):
        for pool in _text(pools).split(","):
            if pool:
                hosted.setdefault(pool, []).append(_text(worker))
    return hosted


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

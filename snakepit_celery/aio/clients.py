"""``redis.asyncio`` clients for the async callers: one per event loop and Redis, never shared across loops.

An asyncio connection belongs to the loop it was opened in, so a client made
in one loop (a test's, uvicorn's) must not serve another: the clients are kept
per running loop, and go with it.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import redis
import redis.asyncio as aioredis

__all__ = ["MAX_CONNECTIONS", "async_client", "close_loop_clients", "from_connparams"]

#: Connections a loop's client opens at most to one Redis: a thousand awaiting calls share them
#: (a plain pool would open one per concurrent command).
MAX_CONNECTIONS = 16

_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aioredis.Redis]] = (
    weakref.WeakKeyDictionary()
)

#: The asyncio connection class for each of redis-py's sync ones (Celery's backend names the sync ones).
_CONNECTION_CLASSES: dict[type[Any], type[Any]] = {
    redis.Connection: aioredis.Connection,
    redis.SSLConnection: aioredis.SSLConnection,
    redis.UnixDomainSocketConnection: aioredis.UnixDomainSocketConnection,
}


def async_client(url: str, *, blocking_reads: bool = False) -> aioredis.Redis:
    """The running loop's client of the Redis at ``url`` (made on first use).

    Args:
        url: the Redis URL.
        blocking_reads: for commands that block (``XREAD BLOCK``): a connection for
            each at once, however many. Otherwise the loop's commands share
            :data:`MAX_CONNECTIONS` connections, waiting for a free one.
    """
    clients = _by_loop.setdefault(asyncio.get_running_loop(), {})
    key = f"{'blocking' if blocking_reads else 'shared'}:{url}"
    client = clients.get(key)
    if client is None:
        if blocking_reads:
            client = aioredis.Redis.from_url(url)
        else:
            pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS)
            client = aioredis.Redis(connection_pool=pool)
        clients[key] = client
    return client


def from_connparams(key: str, params: dict[str, Any]) -> aioredis.Redis:
    """The running loop's client made from a sync redis-py connection pool's keyword arguments.

    Celery's Redis result backend keeps its settings (URL, ``redis_backend_use_ssl``,
    timeouts, credentials) as such a dict (``backend.connparams``); the async
    client gets the same ones, with the asyncio connection class.

    Args:
        key: what names this Redis among the loop's clients.
        params: the keyword arguments of ``redis.ConnectionPool``.
    """
    clients = _by_loop.setdefault(asyncio.get_running_loop(), {})
    client = clients.get(key)
    if client is None:
        kwargs = {k: v for k, v in params.items() if v is not None}
        sync_class = kwargs.pop("connection_class", redis.Connection)
        kwargs["connection_class"] = _CONNECTION_CLASSES.get(sync_class, aioredis.Connection)
        kwargs["max_connections"] = int(kwargs.get("max_connections") or MAX_CONNECTIONS)
        pool = aioredis.BlockingConnectionPool(**kwargs)
        client = clients[key] = aioredis.Redis(connection_pool=pool)
    return client


async def close_loop_clients() -> None:
    """Close the running loop's Redis clients (:func:`~snakepit_celery.aio.results.aclose_clients`)."""
    clients = _by_loop.pop(asyncio.get_running_loop(), {})
    for client in clients.values():
        await client.aclose(close_connection_pool=True)

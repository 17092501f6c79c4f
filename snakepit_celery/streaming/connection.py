"""The streams' Redis: one shared client per URL, and the key prefix of an app's streams.

Both ``stream()`` (which sends the task) and ``Stream.follow`` (which only
reads) need them, so they live here, below :mod:`~snakepit_celery.streaming.caller`
and :mod:`~snakepit_celery.streaming.client`, and neither imports the other.
"""

from __future__ import annotations

import threading

import redis
from celery import Celery

from snakepit_celery.appconfig import config_for, resolve_redis_url

__all__ = ["redis_client", "stream_prefix"]

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def redis_client(url: str | None = None, app: Celery | None = None) -> redis.Redis:
    """The shared Redis client of the streams' Redis (one connection pool per URL).

    Args:
        url: the Redis URL; None resolves it from ``app`` (``SNAKEPIT_REDIS_URL``,
            then the app's result backend or broker when they are Redis).
        app: the Celery app; None means the current app.
    """
    if url is None:
        url = resolve_redis_url(app)  # None: the current app
    with _lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = redis.Redis.from_url(url)
        return client


def stream_prefix(app: Celery | None = None) -> str:
    """The key prefix of ``app``'s streams (its config's ``queue_prefix``)."""
    return config_for(app).queue_prefix  # None: the current app

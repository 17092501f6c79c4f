"""The caller's side of a session call: validate, route, publish to the session queue.

Every call of a session, the first one too, is published to the session's
own queue ``<prefix>.session.<id>``, so calls run in the order they were sent
even while the session is being bound or taken over. Routing (one Lua script
in the sessions Redis) makes sure someone consumes that queue: a new session
is bound there and then to the least-loaded live worker hosting its pool, and
an owner that released the queue's consumer (idle) is woken up. Two callers
racing on a new session meet in that script, so there is one owner and each
call is in the queue exactly once.

The queue uses the default (anonymous) exchange: no binding is created, so a
Redis broker keeps no ``_kombu.binding.*`` key for it. On RabbitMQ every publish
is preceded by a ``nowait`` queue declare on the same channel (no round trip):
a session queue is deleted when its session expires, and a publish to a
missing queue would be dropped silently.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

import kombu
import redis
from kombu.utils.uuid import uuid

from snakepit_celery.config import NAME_RE
from snakepit_celery.errors import InvalidArguments, SessionError
from snakepit_celery.sessions.ids import validate_session_id
from snakepit_celery.sessions.lease import LeaseTable, Route
from snakepit_celery.sessions.settings import settings_for
from snakepit_celery.sessions.wirejson import dumps

__all__ = ["SessionRouter", "parse_call", "router_for", "session_queue", "session_queue_name"]

_CALL_NAMES = ("session_id", "command", "args")
#: Seconds between two looks at a closing session.
_CLOSING_POLL = 0.05


def session_queue_name(prefix: str, session_id: str) -> str:
    """``<prefix>.session.<id>``."""
    return f"{prefix}.session.{session_id}"


def session_queue(prefix: str, session_id: str) -> Any:
    """The session's queue: durable, on the anonymous exchange (no binding)."""
    name = session_queue_name(prefix, session_id)
    queue: Any = getattr(kombu, "Queue")  # noqa: B009 (kombu does not export it to mypy)
    exchange: Any = getattr(kombu, "Exchange")  # noqa: B009
    return queue(name, exchange(""), routing_key=name, durable=True, auto_delete=False)


def parse_call(args: Any, kwargs: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """Validate a call's arguments before anything is sent.

    Returns:
        The session id and the call's keyword arguments (all of them by name).

    Raises:
        InvalidSessionId: the session id is unfit for a queue name or a key.
        InvalidArguments: no command, or a malformed call.
    """
    named = dict(kwargs or {})
    positional = list(args or ())
    if len(positional) > len(_CALL_NAMES):
        raise InvalidArguments(
            f"execute_in_session takes (session_id, command, args); got {len(positional)} positional values"
        )
    for name, value in zip(_CALL_NAMES, positional, strict=False):
        if name in named:
            raise InvalidArguments(f"execute_in_session got {name!r} twice")
        named[name] = value
    session_id = validate_session_id(named.get("session_id"))
    command = named.get("command")
    if not isinstance(command, str) or not command:
        raise InvalidArguments(f"execute_in_session needs a command name, not {command!r}")
    pool = named.get("pool")
    if pool is not None and not (isinstance(pool, str) and NAME_RE.match(pool)):
        raise InvalidArguments(f"pool {pool!r} must match {NAME_RE.pattern}")
    return session_id, named


class SessionRouter:
    """Routes calls of one app's sessions (one Redis client, one prefix).

    Args:
        app: the Celery app.
        redis_url: the sessions Redis.
        prefix: the queue prefix.
        default_pool: the pool a new session binds to when the call names none.
    """

    def __init__(self, app: Any, redis_url: str, prefix: str, default_pool: str) -> None:
        self.app = app
        self.prefix = prefix
        self.default_pool = default_pool
        self.leases = LeaseTable(redis.Redis.from_url(redis_url), prefix)

    def route(self, session_id: str, pool: str | None, **journal: str) -> Route:
        """Route one call, waiting while the session is being closed.

        Raises:
            SessionError: the session belongs to another pool, or stayed closing.
        """
        deadline = time.monotonic() + settings_for(self.app).closing_wait
        while True:
            found = self.leases.route(session_id, pool, self.default_pool, **journal)
            if found.status == "pool":
                raise SessionError(f"session {session_id!r} is bound to pool {found.pool!r}, not {pool!r}")
            if found.status != "closing":
                return found
            if time.monotonic() > deadline:
                raise SessionError(f"session {session_id!r} is still closing (expiring); try again")
            time.sleep(_CLOSING_POLL)

    def send(
        self,
        task: Any,
        args: Any,
        kwargs: dict[str, Any] | None,
        *,
        producer: Any = None,
        **options: Any,
    ) -> Any:
        """Validate, route and publish one call; returns its ``AsyncResult``."""
        from celery import Task

        session_id, named = parse_call(args, kwargs)
        queue = session_queue(self.prefix, session_id)
        for key in ("queue", "exchange", "routing_key", "declare"):
            options.pop(key, None)
        with self.app.producer_or_acquire(producer) as prod:
            on_redis = prod.connection.transport.driver_type == "redis"
            journal = {}
            if on_redis:  # journal the call (see lease.py): kombu could lose it in flight
                options["task_id"] = options.get("task_id") or uuid()
                call = {k: v for k, v in named.items() if k not in ("session_id", "command", "args")}
                journal = {
                    "task_id": options["task_id"],
                    "call": dumps([named["command"], named.get("args"), call]),
                }
            found = self.route(session_id, named.get("pool"), **journal)
            named["pool"] = found.pool
            if not on_redis:
                # NOTE: same channel as the publish, so the broker declares first.
                queue.bind(prod.channel).declare(nowait=True)
            return Task.apply_async(task, (), named, producer=prod, queue=queue, declare=[], **options)


_routers: weakref.WeakKeyDictionary[Any, SessionRouter] = weakref.WeakKeyDictionary()
_routers_lock = threading.Lock()


def router_for(app: Any) -> SessionRouter:
    """The router of ``app`` (created once, from its config and Redis)."""
    from snakepit_celery.api import config_for, resolve_redis_url

    with _routers_lock:
        router = _routers.get(app)
        if router is None:
            config = config_for(app)
            url = resolve_redis_url(app, config)
            router = SessionRouter(app, url, config.queue_prefix, config.default_pool)
            _routers[app] = router
        return router

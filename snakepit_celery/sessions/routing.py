"""The caller's side of a session call: validate, route, publish to the session queue.

Every call of a session, the first one too, is published to the session's
own queue ``<prefix>.session.<id>``, so calls run in the order they were sent
even while the session is being bound or taken over. Routing (one Lua script
in the sessions Redis) makes sure someone consumes that queue: a new session
is bound there and then to the least-loaded live worker hosting its pool, and
an owner that released the queue's consumer (idle) is woken up. Two callers
racing on a new session meet in that script, so there is one owner and each
call is in the queue exactly once. Every task that runs in a session comes
this way (``execute_in_session``, and ``execute_stream``/``execute_batch`` given
a ``session_id``; see :mod:`.calls`).

The call is journalled by the same script (see :mod:`.lease`): on a Redis
broker so that a failover can republish a call kombu lost in flight, on
RabbitMQ so that a call keeps its place in the send order while an earlier one
is still held by a frozen owner (a call with an ETA keeps no place: it runs
when it is due). When the publish fails, the entry is taken out again, so a
failover never republishes a call its caller saw fail.

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

from snakepit_celery.errors import SessionError
from snakepit_celery.sessions.calls import journal_entry, parse_call, parse_session_call
from snakepit_celery.sessions.lease import LeaseTable, Route
from snakepit_celery.sessions.settings import settings_for

__all__ = ["SessionRouter", "parse_call", "router_for", "session_queue", "session_queue_name"]

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

    def route(self, session_id: str, pool: str | None, **journal: Any) -> Route:
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
        """Validate, route and publish one session call of ``task``; returns its ``AsyncResult``.

        ``task`` is any of :data:`~snakepit_celery.sessions.calls.SESSION_TASKS`;
        the call is published to the session's queue whatever ``queue``,
        ``exchange`` or ``routing_key`` the options name.

        Raises:
            InvalidSessionId, InvalidArguments: before anything is sent.
            PoolNotFound: the call names a pool that neither the config nor a live worker knows.
            SessionError: the session is bound to another pool, or stayed closing.
        """
        from celery import Task

        session_id, args, named = parse_session_call(task.name, args, kwargs)
        if named.get("pool"):  # a new session would wait for an owner that never comes
            from snakepit_celery.appconfig import config_for
            from snakepit_celery.integration.known_pools import check_pool

            check_pool(self.app, config_for(self.app), named["pool"])
        queue = session_queue(self.prefix, session_id)
        for key in ("queue", "exchange", "routing_key", "declare"):
            options.pop(key, None)
        with self.app.producer_or_acquire(producer) as prod:
            on_redis = prod.connection.transport.driver_type == "redis"
            options["task_id"] = options.get("task_id") or uuid()
            journal = {
                "task_id": options["task_id"],
                # RabbitMQ keeps its messages: the entry only holds the call's place in the order.
                "call": journal_entry(task.name, args, named, options) if on_redis else "",
                "ordered": not on_redis and options.get("eta") is None and options.get("countdown") is None,
            }
            found = self.route(session_id, named.get("pool"), **journal)
            named["pool"] = found.pool
            try:
                if not on_redis:
                    # NOTE: same channel as the publish, so the broker declares first.
                    queue.bind(prod.channel).declare(nowait=True)
                return Task.apply_async(task, args, named, producer=prod, queue=queue, declare=[], **options)
            except BaseException:
                # Not sent (as far as we know): a journal entry left behind would be
                # republished at failover, running a call its caller saw fail.
                self.leases.drop_call(session_id, journal["task_id"])
                raise


_routers: weakref.WeakKeyDictionary[Any, SessionRouter] = weakref.WeakKeyDictionary()
_routers_lock = threading.Lock()


def router_for(app: Any) -> SessionRouter:
    """The router of ``app`` (created once, from its config and Redis)."""
    from snakepit_celery.appconfig import config_for, resolve_redis_url

    with _routers_lock:
        router = _routers.get(app)
        if router is None:
            config = config_for(app)
            url = resolve_redis_url(app, config)
            router = SessionRouter(app, url, config.queue_prefix, config.default_pool)
            _routers[app] = router
        return router

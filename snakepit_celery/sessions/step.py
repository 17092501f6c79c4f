"""The worker's session machinery as a consumer bootstep.

It starts after the task consumer exists (it adds session queues to it) and
is told again after every reconnection (the new task consumer knows none of
them). The session tasks find the manager through :func:`current_manager`.

It watches the messages of every task that runs in a session (see
:mod:`.calls`): ``task_received`` gives each its place in its session's line,
``task_revoked`` takes a revoked one out of the line and out of the journal.

Warm shutdown hands the sessions over last. Celery stops the consumer (no
more messages), then the snakepit step lets the task pool finish the calls it
runs and drains the bridges, and only then shuts the consumer's steps down,
this one first of them: while its connection is still open, the messages it
had prefetched and not run are not back in their queues. So this step cancels
the task consumer, puts the unacknowledged messages back at the head of their
queues in order (Redis; RabbitMQ requeues them in place when the channel
closes) and closes its channel, and only then leaves its lease. A worker taking a session over
finds every waiting call in its queue, in order, and none still running.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps, signals

from snakepit_celery.errors import ConfigurationError
from snakepit_celery.recovery import POOL_TASKS, set_ledger
from snakepit_celery.sessions.broker import return_delivered
from snakepit_celery.sessions.calls import SESSION_TASKS, session_id_of
from snakepit_celery.sessions.manager import SessionManager
from snakepit_celery.sessions.settings import settings_for
from snakepit_celery.sessions.store import SessionStore

__all__ = ["SessionStep", "current_manager", "session_loader_for"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_manager: SessionManager | None = None
#: Whether the broker is Redis, whose delivery tags are unique and name a message.
_redis_broker = False


def current_manager() -> SessionManager:
    """The session manager of this worker process.

    Raises:
        ConfigurationError: this process is not a worker with snakepit installed.
    """
    manager = _manager
    if manager is None:
        raise ConfigurationError(
            "sessions: this process is not a snakepit worker; execute_in_session runs only in a "
            "worker of an app passed to snakepit_celery.install(app)"
        )
    return manager


def session_loader_for(app: Any) -> Callable[[str], dict[str, Any] | None] | None:
    """The pool's ``session_loader``: a session's stored data (programs, metadata),
    sent to the bridge with InitSession so it can rebuild the session's state."""
    from snakepit_celery.appconfig import config_for, resolve_redis_url

    config = config_for(app)
    try:
        url = resolve_redis_url(app, config)
    except ConfigurationError:
        return None  # no Redis: no sessions (the session step says so)
    store = SessionStore(url, prefix=config.queue_prefix)

    def load(session_id: str) -> dict[str, Any] | None:
        return store.get_session(session_id)

    return load


def _on_received(sender: Any = None, request: Any = None, **kwargs: Any) -> None:
    manager = _manager
    if manager is None or request is None:
        return
    if request.name in POOL_TASKS:
        _record_taken(manager, request)
    if request.name not in SESSION_TASKS:
        return
    session_id = session_id_of(request.name, request.args, request.kwargs)
    if session_id is not None:
        manager.received(session_id, request.id, has_eta=bool(request.eta))


def _record_taken(manager: SessionManager, request: Any) -> None:
    """Note a pool message in the call ledger; on Redis with its delivery tag,
    by which a survivor puts it back (RabbitMQ tags name nothing outside their channel)."""
    info = request.delivery_info or {}
    message = getattr(request, "message", None)
    tag = str(message.delivery_tag) if _redis_broker and message is not None else ""
    manager.ledger.received(request.id, str(info.get("routing_key") or ""), tag)


def _on_postrun(sender: Any = None, task_id: str | None = None, **kwargs: Any) -> None:
    # After the result is stored: a record of a finished call must outlive a lost ack.
    manager = _manager
    if manager is not None and task_id and getattr(sender, "name", None) in POOL_TASKS:
        manager.ledger.finished(task_id)


def _on_revoked(sender: Any = None, request: Any = None, **kwargs: Any) -> None:
    manager = _manager
    name = getattr(sender, "name", None)
    if manager is not None and request is not None and name in POOL_TASKS and request.id:
        manager.ledger.finished(request.id)
    if manager is None or request is None or name not in SESSION_TASKS:
        return
    session_id = session_id_of(name, getattr(request, "args", None), getattr(request, "kwargs", None))
    if session_id is not None and request.id:
        manager.revoked(session_id, request.id)


def _return_prefetched(c: Any) -> None:
    """Put the messages this worker received and did not run back in their queues.

    Called after the task pool has stopped, so every message still
    unacknowledged now was never run (or its task was cancelled unstarted).
    """
    consumer, connection = getattr(c, "task_consumer", None), getattr(c, "connection", None)
    if consumer is None or connection is None:
        return  # no connection: its messages went back when it was lost
    try:
        consumer.cancel()
        channel = getattr(consumer, "channel", None)
        if channel is not None:
            if connection.transport.driver_type == "redis":
                returned = return_delivered(channel)  # in order; kombu's close would reverse them
                log.info("snakepit: sessions: %d unrun message(s) back in their queues", returned)
            channel.close()
    except connection.connection_errors + connection.channel_errors as exc:
        log.debug("snakepit: sessions: task channel already closed: %r", exc)
    except Exception:  # the connection's own close still returns them
        log.exception("snakepit: sessions: returning prefetched messages failed")


class SessionStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Own sessions: lease, session queues, failover and expiry."""

    label = "snakepit-sessions"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.manager: SessionManager | None = None

    def start(self, c: Any) -> None:
        global _manager, _redis_broker
        if self.manager is None:
            from snakepit_celery.appconfig import config_for, resolve_redis_url
            from snakepit_celery.integration.worker import current_host

            config = config_for(c.app)
            try:
                redis_url = resolve_redis_url(c.app, config)
            except ConfigurationError as exc:
                log.warning(
                    "snakepit: sessions are off in this worker, and so is the call ledger (a dead "
                    "worker's calls are then redelivered as the broker does it, and one that had "
                    "begun may run again): %s",
                    exc,
                )
                return
            self.manager = SessionManager(
                c.app,
                redis_url=redis_url,
                prefix=config.queue_prefix,
                pools=[p.name for p in config.pools],
                hostname=c.hostname,
                settings=settings_for(c.app),
                host=current_host,
            )
            signals.task_received.connect(_on_received, weak=False)
            signals.task_revoked.connect(_on_revoked, weak=False)
            signals.task_postrun.connect(_on_postrun, weak=False)
            with _lock:
                _manager = self.manager
                _redis_broker = c.connection.transport.driver_type == "redis"
            self.manager.order_calls = not _redis_broker
            set_ledger(self.manager.ledger)
            self.manager.switch.attach(c)
            self.manager.start()
            log.info("snakepit: sessions of %s", self.manager.worker_id)
        else:
            self.manager.switch.attach(c)

    def stop(self, c: Any) -> None:
        if self.manager is not None:
            self.manager.switch.detach()

    def shutdown(self, c: Any) -> None:
        global _manager
        manager, self.manager = self.manager, None
        if manager is None:
            return
        manager.switch.detach()
        # The worker's steps have stopped (the task pool has finished its calls);
        # the lease goes only after the unrun messages are back in their queues.
        _return_prefetched(c)
        set_ledger(None)
        manager.stop()
        with _lock:
            if _manager is manager:
                _manager = None

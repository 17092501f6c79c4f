"""The caller-side API: ``install`` a Celery app, find its config, its Redis, its stats.

It imports every feature (``install`` registers their tasks and steps), so it
sits above them all; what they need of it, an app's config and its Redis, is
in :mod:`snakepit_celery.appconfig`, re-exported here.

``install(app)`` is all a Django or Flask project adds to its own Celery app:
the worker then hosts the pools (see :mod:`snakepit_celery.integration.worker`) and sending
``execute`` routes to them. The settings it needs are applied once the app's
configuration is loaded, and only where the app left Celery's own default, so
anything the project set itself (in code, a config module, Django settings,
or on the command line) still wins. (Celery's ``add_defaults`` cannot do this:
its defaults outrank a ``config_from_object`` module.)
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from celery import Celery
from celery.app.defaults import DEFAULTS as CELERY_DEFAULTS

# re-exported: the caller's API lives here (snakepit_celery.appconfig keeps them below every layer)
from snakepit_celery.appconfig import app_or_current, bind_config, config_for, is_redis, resolve_redis_url
from snakepit_celery.config import SnakepitConfig
from snakepit_celery.errors import ConfigurationError
from snakepit_celery.observability.stats import get_stats  # re-exported: the caller's API lives here

__all__ = [
    "DEFAULT_BROKER_URL",
    "app_or_current",
    "config_for",
    "create_app",
    "get_stats",
    "install",
    "resolve_redis_url",
]

#: Broker of :func:`create_app` when neither the config nor Celery's environment names one.
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"

_installed: weakref.WeakSet[Celery] = weakref.WeakSet()


def install(app: Celery, config: SnakepitConfig | None = None) -> None:
    """Make ``app``'s workers host snakepit pools and its callers route to them.

    Adds the worker bootstep and, where the app kept Celery's default: the
    threads pool, JSON only (pickle refused; big ``bytes`` by reference through
    the snakepit Redis, see :mod:`snakepit_celery.payloads`), task events on
    (Flower), enough worker threads for every bridge, and the config's
    broker/backend if it has them. Idempotent.

    Args:
        app: the project's Celery app.
        config: the pools to host; None reads ``SNAKEPIT_CONFIG`` (a TOML file)
            and ``SNAKEPIT_*`` variables when first needed.

    Example::

        app = Celery("proj", broker="redis://localhost:6379/0", backend="redis://localhost:6379/1")
        install(app)
    """
    from snakepit_celery import payloads  # the serializers of big bytes by reference
    from snakepit_celery.batch import tasks as _batch_tasks  # noqa: F401  (snakepit.execute_batch)
    from snakepit_celery.integration import tasks  # noqa: F401  (registers the shared tasks)
    from snakepit_celery.integration.worker import SnakepitStep, use_session_loaders
    from snakepit_celery.sessions import task as _session_task  # noqa: F401  (snakepit.execute_in_session)
    from snakepit_celery.sessions.step import SessionStep, session_loader_for
    from snakepit_celery.streaming import task as _stream_task  # noqa: F401  (snakepit.execute_stream)

    app = app_or_current(app)  # install(current_app) keys the real app, not the proxy
    if config is not None:
        bind_config(app, config)
    if app in _installed:
        return
    _installed.add(app)
    payloads.register_app(app)
    use_session_loaders(session_loader_for)  # the pools rebuild a session's state from its store
    app.steps["worker"].add(SnakepitStep)
    app.steps["consumer"].add(SessionStep)
    if app.configured:
        _apply_defaults(app)
    else:
        app.on_after_configure.connect(_on_after_configure, sender=app, weak=False)


def create_app(config: SnakepitConfig | None = None, *, main: str = "snakepit_celery") -> Celery:
    """A new Celery app with snakepit installed: the ready-made app, the CLI's and the demo's.

    The broker is ``config.broker_url``, else Celery's ``CELERY_BROKER_URL``, else
    :data:`DEFAULT_BROKER_URL`; results go to ``config.result_backend``, else
    ``CELERY_RESULT_BACKEND``, else the broker when it is Redis.

    Args:
        config: None reads ``SNAKEPIT_CONFIG`` and ``SNAKEPIT_*`` variables.
        main: the app's name (the prefix of its auto-named tasks).

    Raises:
        ConfigurationError: the config is invalid; the message names the field.
    """
    config = config or SnakepitConfig.from_env()
    broker = config.broker_url or os.environ.get("CELERY_BROKER_URL") or DEFAULT_BROKER_URL
    backend = config.result_backend or os.environ.get("CELERY_RESULT_BACKEND")
    if backend is None and is_redis(broker):
        backend = broker  # results need a backend; the broker's Redis is the obvious one
    app = Celery(main, broker=broker, backend=backend)
    install(app, config)
    return app


def _on_after_configure(sender: Celery, **kwargs: Any) -> None:
    _apply_defaults(sender)


def _apply_defaults(app: Celery) -> None:
    conf = app.conf
    for key, value in _defaults(app).items():
        if conf.get(key) == CELERY_DEFAULTS.get(key):
            conf[key] = value
    # NOTE: Celery's control mailbox (ping, inspect, snakepit_stats, and the workers'
    # replies) takes task_serializer: it stays plain JSON, as it carries no big bytes,
    # so that a client without install() (another app, a monitoring script) reads it.
    app.control.mailbox.serializer = "json"


def _defaults(app: Celery) -> dict[str, Any]:
    from snakepit_celery import payloads

    defaults: dict[str, Any] = {
        "worker_pool": "threads",
        # kombu's JSON, big bytes by reference (snakepit_celery.payloads); plain JSON accepted too
        "task_serializer": payloads.MESSAGE_SERIALIZER,
        "result_serializer": payloads.RESULT_SERIALIZER,
        "event_serializer": "json",
        "accept_content": ["json", payloads.MESSAGE_CONTENT_TYPE],
        "result_accept_content": ["json", payloads.RESULT_CONTENT_TYPE],
        "worker_send_task_events": True,
        "task_send_sent_event": True,
    }
    try:
        config = config_for(app)
    except ConfigurationError:
        return defaults  # the worker step reports it at start, naming the field
    defaults["worker_concurrency"] = max(config.total_bridges, os.cpu_count() or 1)
    if config.broker_url:
        defaults["broker_url"] = config.broker_url
    backend = config.result_backend or (config.broker_url if is_redis(config.broker_url) else None)
    if backend:
        defaults["result_backend"] = backend
    return defaults

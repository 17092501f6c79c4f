"""The settings every layer needs: an app's snakepit config and the Redis it uses.

Celery apps carry no snakepit settings of their own, so each app's config is
kept here, by the app (the one given to :func:`~snakepit_celery.install`, else
read from the environment once). The features (sessions, streaming, batch,
payloads, the async callers) and the Celery layer ask it for their config and
their Redis; it sits below them all, so none of them imports
:mod:`snakepit_celery.api` (which imports every feature to register its tasks).
"""

from __future__ import annotations

import weakref

from celery import Celery, current_app
from celery.local import Proxy

from snakepit_celery.config import SnakepitConfig
from snakepit_celery.errors import ConfigurationError

__all__ = ["app_or_current", "bind_config", "config_for", "is_redis", "resolve_redis_url"]

#: URL schemes of a Redis server (kombu/Celery spellings).
# The schemes redis-py can open (it has no ``redis+socket://``; use ``unix://``).
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

_configs: weakref.WeakKeyDictionary[Celery, SnakepitConfig] = weakref.WeakKeyDictionary()


def app_or_current(app: Celery | None = None) -> Celery:
    """``app`` itself, or Celery's current app when None: never the ``current_app`` proxy.

    Every caller-side function that takes ``app=None`` resolves it here, once.
    Celery's ``current_app`` is a lazy proxy: it cannot be a key of the per-app
    weak maps (``TypeError: cannot create weak reference to 'Proxy' object``),
    and an object that kept it would follow whichever app becomes current
    later. A proxy passed in explicitly is resolved the same way.

    Example::

        app = app_or_current(app)   # in a function whose ``app`` defaults to None
    """
    if app is None:
        app = current_app
    if isinstance(app, Proxy):
        # NOTE: Proxy reports the wrapped object's __class__, so only isinstance(…, Proxy) tells them apart.
        resolved: Celery = app._get_current_object()
        return resolved
    return app


def config_for(app: Celery | None = None) -> SnakepitConfig:
    """The snakepit config of ``app`` (None: the current app): the one given to
    ``install``, else :meth:`SnakepitConfig.from_env` (read once per app).

    Raises:
        ConfigurationError: the environment's config is invalid; names the field.
    """
    app = app_or_current(app)
    config = _configs.get(app)
    if config is None:
        config = SnakepitConfig.from_env()
        _configs[app] = config
    return config


def bind_config(app: Celery, config: SnakepitConfig) -> None:
    """Make ``config`` the snakepit config of ``app`` (what ``install(app, config)`` does)."""
    _configs[app] = config


def is_redis(url: str | None) -> bool:
    """Whether ``url`` names a Redis server (a broker or backend URL; None is not)."""
    return bool(url) and str(url).lower().startswith(_REDIS_SCHEMES)


def resolve_redis_url(app: Celery | None = None, config: SnakepitConfig | None = None) -> str:
    """The Redis that sessions and streams use.

    ``SNAKEPIT_REDIS_URL`` (``config.redis_url``), else the app's result backend
    when that is Redis, else its broker when that is Redis.

    Args:
        app: the Celery app; None means the current app.
        config: its snakepit config; None: :func:`config_for` ``(app)``.

    Raises:
        ConfigurationError: none of them is a Redis URL.

    Example::

        SessionStore(resolve_redis_url()).get_session("user_123")
    """
    app = app_or_current(app)
    config = config or config_for(app)
    if config.redis_url:
        return config.redis_url
    for url in (app.conf.result_backend, app.conf.broker_url):
        if isinstance(url, str) and is_redis(url):
            return url
    raise ConfigurationError(
        "redis_url: sessions and streams need Redis: set SNAKEPIT_REDIS_URL (or redis_url in the "
        "config file), or use a redis:// result backend or broker"
    )

"""Tunables of the session machinery, with the reason for each default.

Read from the environment (``SNAKEPIT_SESSION_*``) by :meth:`SessionSettings.from_env`,
so a worker started as a plain subprocess picks them up, or set per app with
:func:`configure_sessions`.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from snakepit_celery.errors import ConfigurationError
from snakepit_celery.sessions.store import DEFAULT_SESSION_TTL

__all__ = [
    "DEFAULT_CONSUMER_IDLE",
    "DEFAULT_LEASE_TTL",
    "SessionSettings",
    "configure_sessions",
    "settings_for",
]

#: Seconds a worker's lease lives without renewal; a dead owner's sessions are
#: taken over within about ``lease_ttl * 1.25 + 1`` seconds (10 s by default).
DEFAULT_LEASE_TTL = 7.0
#: Seconds without a call after which, on a Redis broker, the owner stops
#: consuming a session's queue (it stays bound; the next call wakes it). Keeps
#: the worker's BRPOP short however many sessions it owns.
DEFAULT_CONSUMER_IDLE = 10.0
#: Seconds after a release during which the owner still checks the queue, for
#: calls sent just as it released (they saw the consumer as active).
DEFAULT_RELEASE_COOLING = 3.0
#: Seconds between two routes of a call and the deletion of its session's
#: queue at expiry: a sender publishes well within it.
DEFAULT_EXPIRY_GRACE = 2.0
#: Seconds between two expiry checks of the sessions a worker owns.
DEFAULT_EXPIRY_INTERVAL = 1.0
#: Seconds a caller waits for a session that is being closed (expiring).
DEFAULT_CLOSING_WAIT = 10.0
#: Seconds a session call waits (RabbitMQ) for a call sent before it that has
#: not begun, held by an owner that froze or is being taken over; after that it
#: runs without it, and the earlier call runs when it comes back.
DEFAULT_ORDER_WAIT = 30.0
#: Dead workers that may take a pool call before it is refused with
#: ``WorkerLost``: a call that kills whatever runs it stops after that many.
DEFAULT_MAX_DELIVERIES = 3

_ENV = {
    "SNAKEPIT_SESSION_TTL": "session_ttl",
    "SNAKEPIT_SESSION_LEASE_TTL": "lease_ttl",
    "SNAKEPIT_SESSION_CONSUMER_IDLE": "consumer_idle",
    "SNAKEPIT_SESSION_RELEASE_COOLING": "release_cooling",
    "SNAKEPIT_SESSION_EXPIRY_GRACE": "expiry_grace",
    "SNAKEPIT_SESSION_EXPIRY_INTERVAL": "expiry_interval",
    "SNAKEPIT_SESSION_CLOSING_WAIT": "closing_wait",
    "SNAKEPIT_SESSION_ORDER_WAIT": "order_wait",
    "SNAKEPIT_MAX_DELIVERIES": "max_deliveries",
}
_INTEGERS = ("session_ttl", "max_deliveries")


@dataclass(frozen=True, kw_only=True)
class SessionSettings:
    """How sessions are leased, released and expired."""

    #: Seconds an idle session lives (when it was not created with its own ttl).
    session_ttl: int = DEFAULT_SESSION_TTL
    #: Seconds a worker's ownership lease lives without renewal: the failover bound.
    lease_ttl: float = DEFAULT_LEASE_TTL
    #: Seconds idle before a session's consumer is released; 0 never releases.
    #: None: release on a Redis broker only (RabbitMQ pays nothing per consumer).
    consumer_idle: float | None = None
    #: Seconds the owner keeps checking a released session's queue.
    release_cooling: float = DEFAULT_RELEASE_COOLING
    #: Seconds between the last route of a call and the deletion of the queue.
    expiry_grace: float = DEFAULT_EXPIRY_GRACE
    #: Seconds between expiry checks.
    expiry_interval: float = DEFAULT_EXPIRY_INTERVAL
    #: Seconds a caller waits for a closing session before giving up.
    closing_wait: float = DEFAULT_CLOSING_WAIT
    #: Seconds a session call waits for an earlier one still held elsewhere (RabbitMQ).
    order_wait: float = DEFAULT_ORDER_WAIT
    #: Dead workers that may take a pool call before it is answered with ``WorkerLost``.
    #: (The worker lease above also bounds how soon a dead worker's calls are recovered.)
    max_deliveries: int = DEFAULT_MAX_DELIVERIES

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "consumer_idle":
                continue
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f"sessions.{f.name}: {value!r} must be a number >= 0")
        for name in ("session_ttl", "lease_ttl", "expiry_interval", "max_deliveries"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"sessions.{name}: must be > 0")

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between lease renewals (and dead-owner scans)."""
        return self.lease_ttl / 4

    def consumer_idle_for(self, broker_is_redis: bool) -> float:
        """Seconds idle before release on this broker; 0 means never."""
        if self.consumer_idle is None:
            return DEFAULT_CONSUMER_IDLE if broker_is_redis else 0.0
        return float(self.consumer_idle)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SessionSettings:
        """Defaults overridden by ``SNAKEPIT_SESSION_*`` variables."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var, name in _ENV.items():
            raw = env.get(var)
            if not raw:
                continue
            try:
                values[name] = int(raw) if name in _INTEGERS else float(raw)
            except ValueError:
                raise ConfigurationError(f"{var}: {raw!r} is not a number") from None
        return cls(**values)


_settings: weakref.WeakKeyDictionary[Any, SessionSettings] = weakref.WeakKeyDictionary()


def configure_sessions(app: Any, settings: SessionSettings) -> None:
    """Use ``settings`` for the sessions of ``app`` (callers and workers)."""
    _settings[app] = settings


def settings_for(app: Any) -> SessionSettings:
    """The session settings of ``app``: configured ones, else from the environment."""
    found = _settings.get(app)
    if found is None:
        found = SessionSettings.from_env()
        _settings[app] = found
    return found

"""The worker side: a bootstep that owns the pools, two remote-control commands, and revoke.

:class:`SnakepitStep` joins the worker blueprint (``install()`` adds it). It
runs after the task pool is created and before the consumer, so the bridges
are SERVING before the first message is taken, and on shutdown it stops after
the consumer, so:

* warm shutdown (SIGTERM): the consumer stops taking messages, the task pool
  finishes the calls that are running (queued, unstarted messages go back to
  the broker unacknowledged), then the bridges are drained and stopped;
* cold shutdown (SIGQUIT, a second Ctrl-C): the bridges are killed at once,
  and the calls still running fail with ``BridgeCrashed``/``PoolClosed``.

The tasks reach the pools through :func:`current_host`.

Celery's ``revoke`` is extended (the same command, name and arguments): after
Celery's own handling, a unary call with that task id that is waiting for a
bridge or running on one is cancelled (:mod:`snakepit_celery.engine.cancels`), so
``AsyncResult.revoke()``, ``celery control revoke``, Flower and a cancelled
``aexecute`` stop it in the bridge instead of letting it run to its end.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from celery import bootsteps
from celery.concurrency import solo, thread
from celery.utils.functional import maybe_list
from celery.utils.log import get_logger
from celery.worker.control import control_command, inspect_command
from celery.worker.control import revoke as _celery_revoke  # Celery's own handler, run first

from snakepit_celery.appconfig import config_for
from snakepit_celery.config import SnakepitConfig
from snakepit_celery.engine import grpcenv
from snakepit_celery.engine.cancels import cancel_call
from snakepit_celery.errors import ConfigurationError, SnakepitError

if TYPE_CHECKING:
    from snakepit_celery.engine.host import PoolHost
    from snakepit_celery.observability.monitoring import WorkerTelemetry

__all__ = ["SnakepitStep", "check_redis_credentials", "current_host"]

logger = get_logger("snakepit_celery.worker")  # its name before the integration/ folder

#: Task pools under which a task and the bootstep share one process.
_SUPPORTED_POOLS = (thread.TaskPool, solo.TaskPool)

_lock = threading.Lock()
_host: PoolHost | None = None


def current_host() -> PoolHost:
    """The pools of this worker process.

    Raises:
        ConfigurationError: this process is not a worker with snakepit installed
            (eager mode, a worker of an app without ``install(app)``).
    """
    host = _host
    if host is None:
        raise ConfigurationError(
            "worker: this process hosts no pools; snakepit tasks run only in a worker of an app "
            "passed to snakepit_celery.install(app), started with --pool threads"
        )
    return host


def _set_host(host: PoolHost | None) -> None:
    global _host
    with _lock:
        _host = host


#: A session's stored data by its id (programs, metadata), sent to a bridge with InitSession.
SessionLoader = Callable[[str], "dict[str, Any] | None"]
#: Makes the pools' session loader for an app (the sessions feature's, handed over by
#: ``install``: this layer sits below the features); None: the pools get none.
_session_loaders: Callable[[Any], SessionLoader | None] | None = None


def use_session_loaders(factory: Callable[[Any], SessionLoader | None]) -> None:
    """Give the pools of every worker started from now on ``factory(app)`` as their session loader.

    :func:`snakepit_celery.install` hands over the sessions' own
    (:func:`~snakepit_celery.sessions.step.session_loader_for`).
    """
    global _session_loaders
    _session_loaders = factory


_PICKLE = ("pickle", "application/x-python-serialize")


def _refuse_pickle(conf: Any) -> None:
    """A worker that runs other runtimes' results must never unpickle a message.

    ``install()`` sets JSON only where the app kept Celery's defaults; an app that
    asked for pickle itself is refused here, naming the setting.
    """
    for name in ("accept_content", "result_accept_content"):
        accepted = [str(c).lower() for c in (conf.get(name) or ())]
        if any(c in _PICKLE for c in accepted):
            raise ConfigurationError(
                f"{name}: snakepit refuses pickle (it runs code on what it decodes); "
                f"accept JSON only, e.g. {name} = ['json']"
            )
    for name in ("task_serializer", "result_serializer", "event_serializer"):
        if str(conf.get(name) or "").lower() in _PICKLE:
            raise ConfigurationError(f"{name}: snakepit refuses pickle; use 'json'")


#: Seconds the start-up check waits for the snakepit Redis before leaving it to the retries.
REDIS_CHECK_TIMEOUT = 2.0


def _redis_setting(app: Any, config: SnakepitConfig) -> tuple[str, str] | None:
    """The snakepit Redis URL and the name of the setting it came from, in
    :func:`~snakepit_celery.appconfig.resolve_redis_url`'s order; None: no Redis."""
    env = os.environ
    if config.redis_url:
        named = "SNAKEPIT_REDIS_URL" if env.get("SNAKEPIT_REDIS_URL") == config.redis_url else "redis_url"
        return named, config.redis_url
    for setting, variables in (
        ("result_backend", ("SNAKEPIT_RESULT_BACKEND", "CELERY_RESULT_BACKEND")),
        ("broker_url", ("SNAKEPIT_BROKER_URL", "CELERY_BROKER_URL")),
    ):
        url = app.conf.get(setting)
        if isinstance(url, str) and url.lower().startswith(("redis://", "rediss://", "unix://")):
            source = next((v for v in variables if env.get(v) == url), None)
            if source is None and url == config.broker_url:
                source = "the broker's URL: --broker, SNAKEPIT_BROKER_URL or broker_url"
            return (f"{setting} ({source})" if source else setting), url
    return None


def _where(url: str) -> str:
    """The server and database of a Redis URL, without its user name or password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


def check_redis_credentials(app: Any, config: SnakepitConfig) -> None:
    """Stop a worker whose snakepit Redis refuses its credentials, before anything starts.

    Every later use of that Redis (leases, the call ledger, streams, payloads)
    would otherwise retry a password that can never work, and the worker would
    look alive while failing every call. A Redis that does not answer at all
    is only logged: it may come up, and those retries are then right.

    Raises:
        ConfigurationError: the password (or user) was refused; the message names
            the setting the URL came from, never the password.
    """
    import redis

    found = _redis_setting(app, config)
    if found is None:
        return  # no Redis configured: the features that need one say so themselves
    setting, url = found
    client = redis.Redis.from_url(
        url, socket_connect_timeout=REDIS_CHECK_TIMEOUT, socket_timeout=REDIS_CHECK_TIMEOUT
    )
    try:
        client.ping()
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
        raise ConfigurationError(
            f"{setting}: the snakepit Redis at {_where(url)} refused the worker's credentials "
            f"({type(exc).__name__}: {exc}); correct the user name and password in {setting} "
            "(not shown here)"
        ) from None
    except redis.RedisError as exc:
        logger.warning("snakepit: the Redis of %s (%s) does not answer yet: %s", setting, _where(url), exc)
    finally:
        client.close()


class SnakepitStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Start the pools with the worker and consume their queues."""

    label = "snakepit"
    #: Celery names a step by its module: kept as it was before the integration/ folder.
    name = "snakepit_celery.worker.SnakepitStep"
    #: After the task pool exists, and (the consumer being last) before messages flow.
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        pool_cls = worker.pool_cls
        if not (isinstance(pool_cls, type) and issubclass(pool_cls, _SUPPORTED_POOLS)):
            name = getattr(pool_cls, "__module__", str(pool_cls)).rsplit(".", 1)[-1]
            raise ConfigurationError(
                f"worker_pool: snakepit needs the threads pool, not {name!r}: the bridges belong to "
                "the worker process, which forked or green-threaded children cannot share. "
                "Start the worker with `--pool threads` (worker_pool = 'threads')."
            )
        _refuse_pickle(worker.app.conf)
        self.config = config_for(worker.app)
        check_redis_credentials(worker.app, self.config)
        if not grpcenv.tune_this_process():  # before the pools import gRPC
            logger.debug(
                "snakepit: gRPC keeps its experiments (%s=%r)",
                grpcenv.VARIABLE,
                os.environ.get(grpcenv.VARIABLE, "<unset, but gRPC was loaded before this step>"),
            )
        if worker.concurrency < self.config.total_bridges and issubclass(pool_cls, thread.TaskPool):
            logger.warning(
                "snakepit: worker concurrency %d is below the %d bridges of its pools; "
                "some bridges will stay idle (raise --concurrency)",
                worker.concurrency,
                self.config.total_bridges,
            )
        queues = worker.app.amqp.queues
        for pool in self.config.pools:
            queues.select_add(self.config.queue_name(pool.name))
        self.host: PoolHost | None = None
        self.telemetry: WorkerTelemetry | None = None

    def create(self, worker: Any) -> SnakepitStep:
        return self

    def start(self, worker: Any) -> None:
        from snakepit_celery.engine.host import PoolHost  # gRPC is imported by workers only
        from snakepit_celery.observability.monitoring import WorkerTelemetry

        self.telemetry = WorkerTelemetry(self.config)  # signals, log lines, Prometheus if configured
        host = PoolHost(
            self.config,
            host_key=worker.hostname,
            telemetry=self.telemetry,
            session_loader=_session_loaders(worker.app) if _session_loaders is not None else None,
        )
        try:
            host.start()
        except BaseException:
            host.close(grace=0)
            raise
        self.host = host
        _set_host(host)
        self.telemetry.serve(host)
        logger.info("snakepit: pools %s started", ", ".join(host.pools))

    def stop(self, worker: Any) -> None:
        host = self.host
        if host is None:
            return
        # Let the task pool finish what it is running first: those calls need their bridges.
        worker.pool.stop()
        grace = max(p.shutdown_grace for p in self.config.pools)
        if not host.drain(grace):
            logger.warning("snakepit: calls still running after %.1fs; stopping the bridges", grace)
        self._close(grace)

    def terminate(self, worker: Any) -> None:
        self._close(0.0)

    def _close(self, grace: float) -> None:
        host, self.host = self.host, None
        if host is None:
            return
        _set_host(None)
        host.close(grace=grace)
        if self.telemetry is not None:
            self.telemetry.close()

    def info(self, worker: Any) -> dict[str, Any]:
        host = self.host
        return {"snakepit": host.stats()} if host is not None else {}


@inspect_command()  # type: ignore[untyped-decorator]
def snakepit_stats(state: Any) -> dict[str, Any]:
    """The pool stats of this worker (``celery inspect snakepit_stats``)."""
    host = _host
    if host is None:
        return {"error": "no pools in this worker"}
    return host.stats()


@control_command(  # type: ignore[untyped-decorator]
    args=[("pool", str), ("pid", int)],
    signature="[pool [pid]]",
)
def snakepit_restart(state: Any, pool: str | None = None, pid: int | None = None) -> dict[str, Any]:
    """Restart one bridge (by pid) or all of a pool (``celery control snakepit_restart python``)."""
    host = _host
    if host is None:
        return {"error": "no pools in this worker"}
    try:
        return {"ok": host.pool(pool or None).restart_bridge(pid or None)}
    except SnakepitError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


@control_command(  # type: ignore[untyped-decorator]
    name="revoke", variadic="task_id", signature="[id1 [id2 [... [idN]]]]"
)
def revoke(
    state: Any, task_id: Any, terminate: bool = False, signal: str | None = None, **kwargs: Any
) -> Any:
    """Revoke task by task id (or list of ids); a snakepit call running here is cancelled in its bridge."""
    reply = _celery_revoke(state, task_id, terminate=terminate, signal=signal, **kwargs)
    for each in maybe_list(task_id) or ():
        if cancel_call(str(each)):
            logger.info("snakepit: cancelled the running call %s (revoked)", each)
    return reply

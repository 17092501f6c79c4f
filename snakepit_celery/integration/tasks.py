"""The Celery tasks: ``snakepit.execute`` and the routing that sends it to its pool.

``execute`` is a shared task, so it binds to whatever app is current (a Django
project's, a Flask app's, or the ready-made one). Sending it picks the queue
``<prefix>.pool.<name>`` of the pool it names (the default pool when none is
named) and writes that pool name into the message, so a worker that hosts only
a Node.js pool never receives Python work and the worker never has to guess
which pool the caller meant.

No automatic retry: an infrastructure error (``BridgeCrashed``, ``QueueTimeout``,
``PoolSaturated``...) reaches the caller with ``retryable = True`` and the caller
decides, because only the caller knows whether the command is safe to run
twice. ``idempotent=True`` lets the pool itself rerun a call whose bridge
crashed, once, on a fresh bridge.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from celery import Celery, Task, shared_task
from kombu.exceptions import EncodeError

from snakepit_celery.appconfig import config_for
from snakepit_celery.config import SnakepitConfig
from snakepit_celery.errors import ExecutionError, SnakepitError, WorkerLost
from snakepit_celery.integration.known_pools import check_pool
from snakepit_celery.integration.worker import current_host
from snakepit_celery.payloads import fetch_waiting, sending
from snakepit_celery.recovery import begin_hook

__all__ = ["PoolTask", "check_chain", "execute"]

#: Options that mean "the caller routed this message themselves".
_ROUTING_OPTIONS = ("queue", "exchange", "routing_key")


class PoolTask(Task):  # type: ignore[misc]
    """A task whose messages go to the queue of the pool named in ``kwargs["pool"]``.

    Every way of sending goes through :meth:`apply_async` (``delay``, signatures
    in groups, chains and chords, and the worker sending a chain's next step),
    so routing here covers all of them. A queue, exchange or routing key the
    caller set explicitly is left alone. A pool that neither the caller's config
    nor a live worker knows is refused here with ``PoolNotFound``
    (:mod:`snakepit_celery.integration.known_pools`).
    """

    #: Errors of the command itself are expected outcomes: logged without a traceback.
    throws = (ExecutionError, WorkerLost)
    #: Acknowledged once answered, so a worker's death leaves the message for a
    #: survivor, which then tells a call that began from one that did not (see
    #: :mod:`snakepit_celery.recovery`); with Celery's early ack a call running on
    #: a killed worker would be gone without an answer.
    acks_late = True

    def apply_async(
        self,
        args: Any = None,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> Any:
        if not any(options.get(key) for key in _ROUTING_OPTIONS):
            config = config_for(self.app)
            kwargs = dict(kwargs or {})
            pool = kwargs.get("pool") or config.default_pool
            kwargs["pool"] = pool
            options["queue"] = config.queue_name(pool)
            check_pool(self.app, config, pool)  # a typo fails here, not after the caller's timeout
        if options.get("chain"):  # and in a later step of a chain, before its first step is sent
            check_chain(self.app, config_for(self.app), options["chain"])
        try:
            with sending(self.app):  # big bytes go to this app's snakepit Redis, within its pool's limit
                return super().apply_async(
                    args, kwargs, task_id, producer, link, link_error, shadow, **options
                )
        except EncodeError as exc:  # kombu wraps what the serializer raised: PayloadTooLarge, say
            inner = exc.args[0] if exc.args else None
            if isinstance(inner, SnakepitError):
                raise inner from None
            raise


@shared_task(name="snakepit.execute", base=PoolTask, bind=True)  # type: ignore[untyped-decorator]
def execute(
    self: Task,
    command: str,
    args: Any = None,
    *,
    pool: str | None = None,
    timeout: float | None = None,
    idempotent: bool = False,
) -> Any:
    """Run ``command`` with the JSON value ``args`` on a bridge of ``pool``.

    Args:
        command: the command name, e.g. ``"compute"``.
        args: a JSON value (usually an object); ``bytes`` inside travel as bytes.
        pool: the named pool; the default pool (the config's first) when None.
        timeout: hard limit in seconds; past it the bridge is killed and the call
            fails with ``CommandTimeout``. None: the command's or pool's limit.
        idempotent: the call may run twice, so a call whose bridge crashed is
            rerun once on a fresh bridge instead of failing with ``BridgeCrashed``,
            and a call whose worker died while running it is rerun once on
            another worker instead of failing with ``WorkerLost``.

    Returns:
        The command's result, as the bridge returned it (types kept exactly).

    Raises:
        ExecutionError: the command failed (``CommandError``, ``UnknownCommand``,
            ``InvalidArguments``, ``CommandTimeout``); arrives at the caller as is.
        InfrastructureError: the pool or a bridge failed; ``retryable`` is True.
            ``WorkerLost``: the worker running the call died.

    Example::

        execute.delay("compute", {"operation": "add", "a": 5, "b": 3}).get()["result"]  # 8
    """
    return (
        current_host()
        .pool(pool)
        .execute(
            command,
            args,
            timeout=timeout,
            request_id=self.request.id,
            idempotent=idempotent,
            on_begin=begin_hook(self, idempotent=idempotent),  # a worker's death: see recovery
            resolve_args=fetch_waiting,  # big bytes fetched as the request is built: alive in it alone
        )
    )


def check_chain(app: Celery, config: SnakepitConfig, steps: Iterable[Any] | None) -> None:
    """Check the pools of a chain's later steps too, when its first step is sent.

    A worker sends a chain's next step only once the step before has run: a typo
    there would be found by the worker, far from the caller, and the chain's
    result would never be ready. ``steps`` is the ``chain`` option Celery hands
    to the first step's ``apply_async`` (signatures, possibly groups and chords).

    Raises:
        PoolNotFound: a step names a pool that neither ``config`` nor a live worker knows.
    """
    for pool in _named_pools(app, steps or ()):
        check_pool(app, config, pool)


def _named_pools(app: Celery, sigs: Iterable[Any]) -> Iterator[str]:
    for sig in sigs:
        if not isinstance(sig, dict):
            continue
        kwargs = sig.get("kwargs") or {}
        if sig.get("subtask_type") in ("group", "chord", "chain"):
            for key in ("tasks", "header", "body"):
                inner = kwargs.get(key)
                yield from _named_pools(app, inner if isinstance(inner, (list, tuple)) else [inner])
            continue
        options = sig.get("options") or {}
        named = kwargs.get("pool") if isinstance(kwargs, dict) else None
        routed = any(options.get(key) for key in ("queue", "exchange", "routing_key"))
        if named and not routed and isinstance(app.tasks.get(sig.get("task")), PoolTask):
            yield str(named)

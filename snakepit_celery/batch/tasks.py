"""The tasks ``snakepit.execute_batch`` (one message, many calls) and ``snakepit.batch_join``.

``execute_batch`` runs all its items through the worker's pool at once, in
slices of one ``ExecuteBatch`` call each, as many in flight as the pool has
bridges (see :mod:`.runner`), and returns
their results in input order. It is routed to the queue of the pool it names,
or its session's queue (see :mod:`.routing`), and is acknowledged late: a
worker lost while it runs leaves the message unacknowledged, so the broker
hands the whole batch to another worker, and only that batch. A redelivered
batch whose result is already stored (it finished; only the ack was lost) is
not run again; it returns the stored result.

``batch_join`` is the chord body of :func:`~snakepit_celery.batch.batch_map`:
it joins the chunks' lists into one.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import redis
from celery import Task, shared_task
from celery.states import SUCCESS

from snakepit_celery.appconfig import config_for, resolve_redis_url
from snakepit_celery.batch.items import Batch
from snakepit_celery.batch.progress import PROGRESS_INTERVAL, MapState, outcome_error
from snakepit_celery.batch.routing import BatchTask
from snakepit_celery.batch.runner import BatchCall, runner_for
from snakepit_celery.errors import ConfigurationError, InvalidArguments, SnakepitError
from snakepit_celery.integration.tasks import PoolTask
from snakepit_celery.integration.worker import current_host
from snakepit_celery.recovery import begin_now
from snakepit_celery.sessions.task import session_turn
from snakepit_celery.streaming.task import relay_client

__all__ = ["batch_join", "execute_batch"]

logger = logging.getLogger(__name__)


def _map_state(task: Task, map_id: str, *, chunk: int, total: int, progress: bool) -> MapState | None:
    """The map's shared state, or None when this worker has no Redis for it (no progress asked)."""
    config = config_for(task.app)
    try:
        url = resolve_redis_url(task.app, config)
    except ConfigurationError:
        if progress:
            raise
        return None
    return MapState(
        relay_client(url), map_id, prefix=config.queue_prefix, chunk=chunk, total=total, stream=progress
    )


def _report(state: MapState, batch: Batch, *, final: bool) -> None:
    """Tell the map how far this chunk got; stop the batch if the map has ended otherwise."""
    try:
        ended = state.report(batch.done, batch.failed, batch.error if final else None)
    except redis.RedisError as exc:  # progress is a view: the results do not depend on it
        logger.warning("batch %s: cannot report progress: %s", state.keys.data, exc)
        return
    error = outcome_error(ended) if ended is not None else None
    if error is not None:
        batch.stop(error)


@shared_task(name="snakepit.execute_batch", base=BatchTask, bind=True)  # type: ignore[untyped-decorator]
def execute_batch(
    self: Task,
    command: str,
    items: list[Any],
    *,
    pool: str | None = None,
    timeout: float | None = None,
    session_id: str | None = None,
    return_exceptions: bool = False,
    idempotent: bool = False,
    map_id: str | None = None,
    chunk: int = 0,
    offset: int = 0,
    total: int | None = None,
    progress: bool = False,
) -> list[Any]:
    """Run ``command`` once per item of ``items`` on ``pool``, concurrently; results in input order.

    Args:
        command: the command name, e.g. ``"compute"``.
        items: a list: the JSON ``args`` of each call.
        pool: the named pool; the default pool when None.
        timeout: hard limit of each call, as for ``execute``.
        session_id: send the batch to the worker that owns this session and run
            every call on the session's bridge (one at a time, then); the batch
            takes its turn among the session's calls, in the order sent.
        return_exceptions: a failed item's place holds an error item (see
            :func:`~snakepit_celery.batch.item_error`) and the batch goes on.
        idempotent: as for ``execute``: a call whose bridge crashed is rerun once.
        map_id, chunk, offset, total, progress: set by ``batch_map`` for each chunk:
            the map's id, this chunk's number, the index of its first item in the
            map, the map's item count, and whether to write progress.

    Returns:
        One result per item, in input order.

    Raises:
        BatchItemError: an item failed (without ``return_exceptions``): the
            failed item with the lowest index, its error's class and message.
        CommandCancelled: the map was cancelled from its progress stream.
        InvalidArguments: ``items`` is not a list, or ``command`` not a name.

    Example::

        execute_batch.delay("compute", [{"operation": "sqrt", "a": x} for x in (4, 9)]).get()
    """
    if not isinstance(command, str) or not command:
        raise InvalidArguments(f"execute_batch: command must be a command name, not {command!r}")
    if not isinstance(items, list):
        kind = type(items).__name__
        raise InvalidArguments(f"execute_batch: items must be a list of argument values, not a {kind}")
    request = self.request
    if (request.delivery_info or {}).get("redelivered") and request.id:
        stored = self.AsyncResult(request.id)
        if stored.state == SUCCESS:
            return stored.result  # type: ignore[no-any-return]  # it ran; only the ack was lost
    # A session's batch is a session call: it runs in its turn, on the session's owner.
    turn: AbstractContextManager[str | None] = (
        nullcontext(pool) if session_id is None else session_turn(self, session_id)
    )
    with turn as pool:
        begin_now(self, idempotent=idempotent)  # a worker's death: see recovery
        target = current_host().pool(pool)
        batch = Batch(items, offset=offset, return_exceptions=return_exceptions)
        state = None
        if map_id is not None:
            count = len(items) if total is None else total
            state = _map_state(self, map_id, chunk=chunk, total=count, progress=progress)
        call = BatchCall(
            batch,
            command,
            timeout=timeout,
            session_id=session_id,
            request_id=request.id,
            idempotent=idempotent,
        )
        runner_for(target).submit(call)
        try:
            while not batch.finished.wait(PROGRESS_INTERVAL if state is not None else None):
                if state is not None:
                    _report(state, batch, final=False)
        except BaseException as exc:  # the task is going away: claim no more items
            batch.stop(exc)
            raise
    if state is not None:
        _report(state, batch, final=True)
    if batch.stop_reason is not None:
        raise batch.stop_reason
    if batch.error is not None:
        raise batch.error
    return batch.results


@shared_task(name="snakepit.batch_join", base=PoolTask, bind=True)  # type: ignore[untyped-decorator]
def batch_join(
    self: Task,
    parts: list[list[Any]],
    *,
    pool: str | None = None,
    total: int | None = None,
    map_id: str | None = None,
    progress: bool = False,
) -> list[Any]:
    """Join the chunks' result lists of a map into one list, in input order.

    Raises:
        SnakepitError: the parts do not hold exactly ``total`` results.
    """
    joined = [result for part in parts for result in part]
    if total is not None and len(joined) != total:
        raise SnakepitError(f"map {map_id}: {len(joined)} results for {total} items")
    if map_id is not None and progress and not joined:
        state = _map_state(self, map_id, chunk=0, total=0, progress=True)
        if state is not None:
            state.report(0, 0)  # an empty map: its stream still ends
    return joined

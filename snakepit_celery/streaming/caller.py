"""``stream()``: send ``snakepit.execute_stream`` and hand back its :class:`Stream`.

The reader exists before the task is sent: it reads the task's Redis Stream
from the very first entry, so there is no window in which a chunk can be
published before anyone listens (the race a pub/sub subscriber has to close by
subscribing first is absent by construction).

``redis_client`` and ``stream_prefix`` are :mod:`~snakepit_celery.streaming.connection`'s,
importable from here as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.utils import uuid

from snakepit_celery.appconfig import app_or_current, config_for, resolve_redis_url
from snakepit_celery.streaming.client import Stream
from snakepit_celery.streaming.connection import redis_client, stream_prefix
from snakepit_celery.streaming.pending import DEFAULT_START_TIMEOUT

__all__ = ["redis_client", "stream", "stream_prefix"]


def stream(
    command: str,
    args: Any = None,
    *,
    session_id: str | None = None,
    pool: str | None = None,
    timeout: float | None = None,
    on_chunk: Callable[[dict[str, Any]], object] | None = None,
    idle_timeout: float | None = None,
    start_timeout: float | None = DEFAULT_START_TIMEOUT,
    app: Celery | None = None,
) -> Stream:
    """Start the stream command ``command`` on a worker and read its chunks live.

    Args:
        command: a stream command of the bridge, e.g. ``"batch_inference"``.
        args: its JSON arguments (``bytes`` travel as bytes).
        session_id: run on the bridge of this session, in turn with the
            session's other calls, on the worker that owns it.
        pool: the named pool; the default pool when None.
        timeout: hard limit of the whole stream on the worker, in seconds.
        on_chunk: callback form: called with every chunk (the final one too);
            ``stream()`` then returns only when the stream has ended.
        idle_timeout: seconds without a chunk before the reader gives up with
            :class:`StreamError` (None: as long as the task is queued or running).
        start_timeout: seconds the task may stay queued (no worker has started
            it) before :class:`StreamError`; the stream is then cancelled so it
            never runs unread. None waits as long as it takes. A stream revoked
            or failed before it started ends at once whatever this is (the
            reader asks the result backend).
        app: the Celery app; None means the current app.

    Returns:
        The :class:`Stream`: iterate it, use it as a context manager (leaving
        the block cancels an unfinished stream), ``.cancel()``, ``.task_id``,
        ``.result`` / ``.outcome`` once it ended.

    Raises:
        ConfigurationError: no Redis for streams is configured.
        InvalidSessionId: ``session_id`` is unfit (before anything is sent).
        CommandCancelled: (iterating) the task was revoked, before or while it ran.
        StreamError: (iterating) not started within ``start_timeout``, or the
            worker stopped relaying without a final chunk.
        SnakepitError: (``on_chunk`` form) the command's error, after its chunks.

    Example::

        with stream("process_large_dataset", {"total_rows": 10_000}) as s:
            for chunk in s:
                print(chunk["progress_percent"])
    """
    from snakepit_celery.sessions.ids import validate_session_id
    from snakepit_celery.sessions.routing import session_queue_name
    from snakepit_celery.streaming import task as _registers  # noqa: F401  (the shared task)

    if session_id is not None:  # refused before anything is created or sent
        session_id = validate_session_id(session_id)
    app = app_or_current(app)
    config = config_for(app)
    client = redis_client(resolve_redis_url(app, config), app)
    task_id = uuid()
    reader = Stream(
        client,
        task_id,
        prefix=config.queue_prefix,
        on_chunk=on_chunk,
        idle_timeout=idle_timeout,
        start_timeout=start_timeout,
        app=app,
        pace=True,
    )
    if session_id is not None:  # sent to the session's own queue (see sessions.routing)
        reader.queue = session_queue_name(config.queue_prefix, session_id)
    else:
        reader.queue = config.queue_name(pool or config.default_pool)
        reader.pool = pool or config.default_pool  # a pool no live worker hosts ends the reader in seconds
    client.ping()  # Redis must be reachable before a task is sent that nobody could read
    app.tasks["snakepit.execute_stream"].apply_async(
        (command, args), {"pool": pool, "session_id": session_id, "timeout": timeout}, task_id=task_id
    )
    if on_chunk is not None:
        with reader:
            reader.wait()
    return reader

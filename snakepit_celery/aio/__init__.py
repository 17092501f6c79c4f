"""Async callers: ``aexecute``, ``aexecute_in_session`` and ``astream`` on ``redis.asyncio``.

For FastAPI, Starlette and Django async views, which must not block on
``AsyncResult.get()`` (Celery's results have no async API). Each is its sync
twin with the waiting done on the event loop: the same tasks and routing, the
same result types and error classes, the same stream reader rules, and
cancelling the awaiting coroutine cancels the call. Module map:

* ``results``: a Celery task's result awaited from the Redis result backend
  (pub/sub channel and key ``celery-task-meta-<id>``);
* ``calls``: ``aexecute``, ``aexecute_in_session``;
* ``stream``: ``astream`` and :class:`AsyncStream`;
* ``clients``: the ``redis.asyncio`` clients, one set per event loop.
"""

from __future__ import annotations

from snakepit_celery.aio.calls import aexecute, aexecute_in_session
from snakepit_celery.aio.results import aclose_clients
from snakepit_celery.aio.stream import AsyncStream, astream

__all__ = ["AsyncStream", "aclose_clients", "aexecute", "aexecute_in_session", "astream"]

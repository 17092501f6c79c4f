"""``batch_map``: a big batch as a chord of a few ``execute_batch`` chunks.

A chord of one task per item costs a broker message, a result and a chord
counter update per item (a chord of 1,000 no-op headers takes seconds on a
Redis backend). ``batch_map`` sends each item once, inside one of a few chunk
messages; each chunk runs through a worker's whole pool, and the chord's
body joins the chunks' lists. The result is an ordinary Celery signature.

Chunk size. With none given, it comes from the live workers' pool sizes
(their ``snakepit_stats`` replies, cached for :data:`CAPACITY_TTL` seconds;
the caller's own config if nobody answers):

* at least :data:`CHUNKS_PER_WORKER` chunks per worker hosting the pool, so
  every worker gets work and a slow or lost one holds back little;
* at most :data:`MAX_CHUNK_ITEMS` items per chunk: a chunk is the unit of
  redelivery (a lost worker's chunk runs again from its start), and it must
  finish well within the broker's redelivery window (kombu Redis
  ``visibility_timeout``, default one hour; RabbitMQ ``consumer_timeout``,
  default 30 minutes), or the broker hands a *running* chunk to a second worker;
* at most :data:`MAX_CHUNKS` chunks, because each chord header costs several
  milliseconds on the Redis backend; above that the chunks grow instead;
* at least :data:`MIN_ITEMS_PER_BRIDGE` items per bridge of a worker, so a
  chunk keeps every bridge busy.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

from celery import Celery, chord
from celery.canvas import Signature
from celery.utils import uuid

from snakepit_celery.appconfig import app_or_current, config_for, resolve_redis_url
from snakepit_celery.errors import ConfigurationError, InvalidArguments
from snakepit_celery.integration.known_pools import check_pool
from snakepit_celery.observability.stats import get_stats
from snakepit_celery.streaming.protocol import validate_task_id

__all__ = [
    "CAPACITY_TTL",
    "CHUNKS_PER_WORKER",
    "MAX_CHUNKS",
    "MAX_CHUNK_ITEMS",
    "MIN_ITEMS_PER_BRIDGE",
    "batch_map",
    "chunk_size_for",
    "pool_capacity",
]

#: Seconds the live workers' pool sizes are reused before asking again.
CAPACITY_TTL = 60.0
#: Seconds to wait for the workers' ``snakepit_stats`` replies.
CAPACITY_TIMEOUT = 0.5
#: Chunks per worker hosting the pool, at least (balance, and little lost with a worker).
CHUNKS_PER_WORKER = 4
#: Items per chunk, at most (unless that makes more than ``MAX_CHUNKS`` chunks).
MAX_CHUNK_ITEMS = 1000
#: Chord headers, at most: each costs milliseconds on the Redis result backend.
MAX_CHUNKS = 200
#: Items per bridge of one worker in a chunk, at least.
MIN_ITEMS_PER_BRIDGE = 8

_capacity: weakref.WeakKeyDictionary[Celery, dict[str, tuple[float, int, int]]] = weakref.WeakKeyDictionary()
_capacity_lock = threading.Lock()


def pool_capacity(app: Celery, pool: str, *, refresh: bool = False) -> tuple[int, int]:
    """(workers hosting ``pool``, their bridges in all), from the live workers' stats.

    Asking the workers takes up to :data:`CAPACITY_TIMEOUT` seconds, so the
    answer is kept per app and pool; after :data:`CAPACITY_TTL` seconds the kept
    answer is still returned while a background thread asks again. When no
    worker answers: one worker with the pool size of the caller's config (not
    kept, so the next call asks again).
    """
    now = time.monotonic()
    with _capacity_lock:
        cached = _capacity.get(app, {}).get(pool)
        stale = cached is not None and cached[0] <= now and not refresh
        if cached is not None and stale:
            _capacity[app][pool] = (now + CAPACITY_TTL, cached[1], cached[2])  # one refresh at a time
    if cached is not None and not refresh:
        if stale:
            threading.Thread(target=_ask_workers, args=(app, pool), daemon=True).start()
        return cached[1], cached[2]
    found = _ask_workers(app, pool)
    if found is None:
        try:
            return 1, config_for(app).pool(pool).size
        except ConfigurationError:
            return 1, config_for(app).pools[0].size
    return found


def _ask_workers(app: Celery, pool: str) -> tuple[int, int] | None:
    """Ask the live workers for their pool sizes and keep the answer; None if nobody answered."""
    try:
        nodes = get_stats(app, timeout=CAPACITY_TIMEOUT).get("nodes", {})
    except Exception:  # the broker is unreachable: the caller falls back; the send will say why
        return None
    sizes = [
        int(stats["pools"][pool].get("size", 0))
        for stats in nodes.values()
        if isinstance(stats.get("pools"), dict) and pool in stats["pools"]
    ]
    sizes = [s for s in sizes if s > 0]
    if not sizes:
        return None
    with _capacity_lock:
        _capacity.setdefault(app, {})[pool] = (time.monotonic() + CAPACITY_TTL, len(sizes), sum(sizes))
    return len(sizes), sum(sizes)


def chunk_size_for(items: int, workers: int, bridges: int) -> int:
    """The default chunk size for ``items`` items on ``workers`` workers with ``bridges`` bridges."""
    if items <= 0:
        return 1
    workers = max(1, workers)
    per_worker = max(1, math.ceil(bridges / workers))
    chunks = max(CHUNKS_PER_WORKER * workers, math.ceil(items / MAX_CHUNK_ITEMS))
    chunks = min(chunks, MAX_CHUNKS, max(1, items // (MIN_ITEMS_PER_BRIDGE * per_worker)))
    return math.ceil(items / max(1, chunks))


def batch_map(
    command: str,
    items: Iterable[Any],
    *,
    pool: str | None = None,
    chunk_size: int | None = None,
    session_id: str | None = None,
    return_exceptions: bool = False,
    progress: bool | str = False,
    timeout: float | None = None,
    idempotent: bool = False,
    app: Celery | None = None,
) -> Signature:
    """A signature that runs ``command`` once per item on the workers' pools; its result is the list.

    Args:
        command: the command name, e.g. ``"compute"``.
        items: the JSON ``args`` of each call (any iterable; read once, here).
        pool: the named pool; the default pool when None.
        chunk_size: items per chunk task; None picks it from the live workers'
            pool sizes (see the module docs).
        session_id: run every call on the bridge of this session.
        return_exceptions: a failed item's place holds an error item (see
            :func:`~snakepit_celery.batch.item_error`) instead of failing the map.
        progress: report ``{"done", "total", "failed", "progress_percent"}`` to a
            stream; True makes an id, a string is the id to use. The id is
            ``sig.progress_id``: follow it with ``Stream.follow(id)``; a cancel
            there stops the map.
        timeout: hard limit of each call, as for ``execute``.
        idempotent: as for ``execute``.
        app: the Celery app; None means the current app.

    Returns:
        A chord of ``snakepit.execute_batch`` chunks whose body joins their
        lists: ``.delay()``/``.apply_async(...)`` it, put it in a chain, or
        add a callback with ``|``. Its result is one result per item, in input
        order. Without ``return_exceptions``, it fails with the
        :class:`BatchItemError` of the first item that failed.

    Raises:
        InvalidArguments: a bad command, chunk size or progress id.
        ConfigurationError: ``progress`` was asked and there is no Redis for streams.
        PoolNotFound: neither the config nor a live worker knows ``pool``.

    Example::

        sig = batch_map("compute", [{"operation": "sqrt", "a": x} for x in range(10_000)])
        results = sig.delay().get(timeout=60)      # 10,000 results, in input order
        (sig | total.s()).delay()                  # composes like any signature
    """
    app = app_or_current(app)
    if not isinstance(command, str) or not command:
        raise InvalidArguments(f"batch_map: command must be a command name, not {command!r}")
    values = list(items)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise InvalidArguments(f"batch_map: chunk_size must be a whole number >= 1, not {chunk_size!r}")
    config = config_for(app)
    pool_name = pool or config.default_pool
    config.queue_name(pool_name)  # a pool name unfit for a queue fails here, naming it
    check_pool(app, config, pool_name)  # and a typo here, before the workers are asked their sizes
    progress_id: str | None = None
    if progress:
        progress_id = f"map-{uuid()}" if progress is True else str(progress)
        try:
            validate_task_id(progress_id)
        except Exception as exc:
            raise InvalidArguments(f"batch_map: progress id: {exc}") from None
        resolve_redis_url(app, config)  # no Redis for the stream: say so now, not in a worker
    if chunk_size is None:
        workers, bridges = pool_capacity(app, pool_name)
        chunk_size = chunk_size_for(len(values), workers, bridges)
    map_id = progress_id or f"map-{uuid()}"
    common: dict[str, Any] = {
        "pool": pool,
        "timeout": timeout,
        "session_id": session_id,
        "return_exceptions": return_exceptions,
        "idempotent": idempotent,
        "map_id": map_id,
        "total": len(values),
        "progress": bool(progress),
    }
    execute_batch = app.tasks["snakepit.execute_batch"]
    header = [
        execute_batch.si(command, values[start : start + chunk_size], chunk=number, offset=start, **common)
        for number, start in enumerate(range(0, len(values), chunk_size))
    ]
    body = app.tasks["snakepit.batch_join"].s(
        pool=pool, total=len(values), map_id=map_id, progress=bool(progress)
    )
    sig = chord(header, body, app=app)
    sig.progress_id = progress_id
    return sig


#: ``batch_map`` by the name the issue gave it.
map = batch_map

"""Batches: many calls in one message (``execute_batch``), big maps as a few chunks (``batch_map``).

Module map: ``items`` (one batch's items, results and first error; error
items), ``runner`` (the threads that feed a pool), ``progress`` (a map's
shared state and progress stream in Redis), ``tasks`` (the Celery tasks),
``canvas`` (``batch_map`` and the chunk size).
"""

from snakepit_celery.batch.canvas import batch_map, chunk_size_for, map, pool_capacity
from snakepit_celery.batch.items import ERROR_KEY, error_item, item_error
from snakepit_celery.batch.tasks import batch_join, execute_batch

__all__ = [
    "ERROR_KEY",
    "batch_join",
    "batch_map",
    "chunk_size_for",
    "error_item",
    "execute_batch",
    "item_error",
    "map",
    "pool_capacity",
]

"""snakepit-celery: Celery tasks that call warm, stateful bridge processes over gRPC.

Example::

    from celery import Celery
    from snakepit_celery import execute, install

    app = Celery("proj", broker="redis://localhost:6379/0", backend="redis://localhost:6379/1")
    install(app)
    execute.delay("compute", {"operation": "add", "a": 5, "b": 3}).get(timeout=10)["result"]  # 8

Importing this package creates no Celery app; ``snakepit_celery.celery.app``
is the ready-made one (``celery -A snakepit_celery worker``).
"""

from snakepit_celery.aio import AsyncStream, aclose_clients, aexecute, aexecute_in_session, astream
from snakepit_celery.api import config_for, get_stats, install, resolve_redis_url
from snakepit_celery.batch import batch_map, execute_batch, item_error
from snakepit_celery.batch import map as map  # the name; see __all__
from snakepit_celery.config import PoolConfig, SnakepitConfig
from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.errors import (
    BatchItemError,
    BridgeCrashed,
    BridgeStartError,
    CommandCancelled,
    CommandError,
    CommandTimeout,
    ConfigurationError,
    ExecutionError,
    InfrastructureError,
    InvalidArguments,
    InvalidSessionId,
    PayloadExpired,
    PayloadTooLarge,
    PoolClosed,
    PoolNotFound,
    PoolSaturated,
    QueueTimeout,
    SessionError,
    SessionNotFound,
    SnakepitError,
    StreamError,
    UnknownCommand,
    WorkerLost,
)
from snakepit_celery.integration.tasks import PoolTask, execute
from snakepit_celery.integration.worker import SnakepitStep, current_host
from snakepit_celery.sessions import (
    SessionSettings,
    SessionStep,
    SessionStore,
    SessionTask,
    configure_sessions,
    create_program,
    execute_in_session,
    execute_program,
)
from snakepit_celery.streaming import Stream, stream
from snakepit_celery.streaming.task import execute_stream

__version__ = "0.1.0"

# Grouped by comments, sorted within each group (tests/unit/test_exported_members.py).
# ``map`` (an alias of ``batch_map``) is importable by name but left out, so that
# ``from snakepit_celery import *`` never shadows the builtin ``map``.
__all__ = [  # noqa: RUF022
    # Tasks and the caller's API
    "PoolTask",
    "Stream",
    "batch_map",
    "config_for",
    "execute",
    "execute_batch",
    "execute_stream",
    "get_stats",
    "install",
    "item_error",
    "resolve_redis_url",
    "stream",
    # Async callers (an event loop's: FastAPI, Starlette, Django async views)
    "AsyncStream",
    "aclose_clients",
    "aexecute",
    "aexecute_in_session",
    "astream",
    # Sessions
    "SessionSettings",
    "SessionStep",
    "SessionStore",
    "SessionTask",
    "configure_sessions",
    "create_program",
    "execute_in_session",
    "execute_program",
    # Worker side
    "SnakepitStep",
    "current_host",
    # Configuration
    "EmbeddedRedis",
    "PoolConfig",
    "SnakepitConfig",
    # Errors
    "BatchItemError",
    "BridgeCrashed",
    "BridgeStartError",
    "CommandCancelled",
    "CommandError",
    "CommandTimeout",
    "ConfigurationError",
    "ExecutionError",
    "InfrastructureError",
    "InvalidArguments",
    "InvalidSessionId",
    "PayloadExpired",
    "PayloadTooLarge",
    "PoolClosed",
    "PoolNotFound",
    "PoolSaturated",
    "QueueTimeout",
    "SessionError",
    "SessionNotFound",
    "SnakepitError",
    "StreamError",
    "UnknownCommand",
    "WorkerLost",
]

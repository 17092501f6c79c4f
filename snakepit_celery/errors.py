"""The exceptions of snakepit-celery: one tree, rooted at :class:`SnakepitError`.

::

    SnakepitError
    ├── ConfigurationError          a bad setting; names the field
    ├── InfrastructureError         not the user's code: safe to retry
    │   ├── BridgeStartError        a bridge did not reach SERVING
    │   ├── BridgeCrashed           the bridge died during the call
    │   ├── PoolSaturated           the checkout queue is full (immediate)
    │   ├── QueueTimeout            no bridge came free in time (never runs later)
    │   ├── PoolClosed              the pool is shutting down
    │   ├── PoolNotFound            no such pool: refused when sending, or on the worker
    │   └── WorkerLost              the worker running the call died; names it
    ├── ExecutionError              the command itself failed
    │   ├── CommandError            it raised; carries remote type and traceback
    │   ├── UnknownCommand          no such command; lists the ones there are
    │   ├── InvalidArguments        arguments refused (not JSON, wrong names...)
    │   │   └── PayloadTooLarge     over the configured size limit
    │   ├── CommandTimeout          past its hard timeout; the bridge was replaced
    │   ├── CommandCancelled        cancelled by the caller
    │   └── BatchItemError          one item of a batch failed; carries its index
    ├── PayloadExpired              a big payload stored in Redis is gone (read, or past its TTL)
    ├── SessionError
    │   ├── InvalidSessionId        unfit for a queue name or a Redis key
    │   └── SessionNotFound         unknown or expired session
    └── StreamError                 a stream broke off (lost chunks, no outcome)

Every constructor passes all of its arguments to ``super().__init__``
positionally, because Celery's JSON result backend rebuilds an exception as
``cls(*exc.args)``: the caller then catches the very class the worker raised.
"""

from __future__ import annotations

__all__ = [
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


class SnakepitError(Exception):
    """Base of every error this library raises."""

    #: True when the call may be sent again as it is (the failure was not the
    #: command's own doing).
    retryable: bool = False

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return self.message


class ConfigurationError(SnakepitError):
    """A setting is missing or wrong; the message names the field."""


class InfrastructureError(SnakepitError):
    """The pool, a bridge process or a service failed, not the user's code."""

    retryable = True


class BridgeStartError(InfrastructureError):
    """A bridge process exited or did not report SERVING in time."""


class BridgeCrashed(InfrastructureError):
    """The bridge died while running the call; it has been replaced."""


class PoolSaturated(InfrastructureError):
    """The pool's checkout queue is at its maximum length; refused at once."""


class QueueTimeout(InfrastructureError):
    """No bridge came free within the queue timeout; the call was never run."""


class PoolClosed(InfrastructureError):
    """The pool is draining or closed and takes no new calls."""


class PoolNotFound(InfrastructureError):
    """No pool of that name: neither the caller's config nor a live worker has it
    (raised when sending, naming the pools there are and the closest), or the
    worker that received the call does not host it."""


class WorkerLost(InfrastructureError):
    """The worker that had taken the call died (or lost its broker) before answering.

    Raised for a call that had *begun* on that worker (it may have run, in part
    or whole, so it is not run again unless it was sent with ``idempotent=True``),
    and for a call that dead workers took too often (``max_deliveries``): a
    call that kills every worker that runs it must not go round forever.

    Args:
        message: what happened, naming the worker.
        worker: the worker id (``name@host#token``), empty when unknown.
    """

    def __init__(self, message: str, worker: str = "") -> None:
        super().__init__(message, worker)

    @property
    def worker(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else ""


class ExecutionError(SnakepitError):
    """The command ran (or was refused by the bridge) and failed."""


class CommandError(ExecutionError):
    """The command raised in the bridge.

    Args:
        message: the remote exception's message.
        remote_type: the remote exception type, e.g. ``"ZeroDivisionError"``.
        remote_traceback: the remote traceback as text.
    """

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message, remote_type, remote_traceback)

    @property
    def remote_type(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else ""

    @property
    def remote_traceback(self) -> str:
        return str(self.args[2]) if len(self.args) > 2 else ""

    def __str__(self) -> str:
        return f"{self.remote_type}: {self.message}" if self.remote_type else self.message


class UnknownCommand(ExecutionError):
    """The bridge has no such command; the message lists those it has."""


class InvalidArguments(ExecutionError):
    """The arguments were refused: not JSON, not an object, or wrong names."""


class PayloadTooLarge(InvalidArguments):
    """The arguments or the result exceed the configured size limit."""


class CommandTimeout(ExecutionError):
    """The call ran past its hard timeout; the bridge was killed and replaced."""


class CommandCancelled(ExecutionError):
    """The caller cancelled the call."""


class BatchItemError(ExecutionError):
    """One item of a batch (``execute_batch``, ``batch_map``) failed, and so did the batch.

    ``retryable`` follows the item's own error: True when it was an
    infrastructure error (a crashed bridge, a queue timeout...).

    Args:
        message: the item's error message.
        index: the item's position in the input (of the whole map), from 0.
        error_class: the class of the item's error, e.g. ``"CommandError"``.
        remote_type: the remote exception type, e.g. ``"ZeroDivisionError"``.
        remote_traceback: the remote traceback as text.
    """

    def __init__(
        self,
        message: str,
        index: int = -1,
        error_class: str = "",
        remote_type: str = "",
        remote_traceback: str = "",
    ) -> None:
        super().__init__(message, index, error_class, remote_type, remote_traceback)
        cause = globals().get(str(error_class))
        self.retryable = isinstance(cause, type) and issubclass(cause, InfrastructureError)

    @property
    def index(self) -> int:
        return int(self.args[1])

    @property
    def error_class(self) -> str:
        return str(self.args[2])

    @property
    def remote_type(self) -> str:
        return str(self.args[3])

    @property
    def remote_traceback(self) -> str:
        return str(self.args[4])

    def __str__(self) -> str:
        kind = self.remote_type or self.error_class
        return f"item {self.args[1]}: {kind + ': ' if kind else ''}{self.message}"


class PayloadExpired(SnakepitError):
    """A big ``bytes`` value stored in the snakepit Redis is gone: its result was
    read already (a stored payload is read once, then deleted), or nobody read it
    within ``payload_ref_ttl`` seconds. Sending the call again is the remedy."""


class SessionError(SnakepitError):
    """A session could not be used."""


class InvalidSessionId(SessionError):
    """The session id is empty, too long or has characters unfit for a key."""


class SessionNotFound(SessionError):
    """No such session, or it has expired."""


class StreamError(SnakepitError):
    """A stream ended without its final chunk, or chunks were lost."""

"""One batch's items: who runs which next, their results in input order, the first error.

A :class:`Batch` is shared by the threads that run its items. Items are
claimed strictly in input order, so when an item fails and the batch stops
claiming, every item before it has already been claimed and will finish:
the error the batch reports (the failed item with the lowest index) is the
same whatever the timing was.

With ``return_exceptions`` a failed item's place holds an *error item*, a
plain JSON object (it must survive Celery's JSON result backend), recognised
by its ``__snakepit_error__`` key; :func:`item_error` turns it back into a
:class:`BatchItemError`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from snakepit_celery.errors import BatchItemError, InfrastructureError, SnakepitError

__all__ = ["ERROR_KEY", "Batch", "error_item", "item_error"]

#: The key that marks an error item in a ``return_exceptions`` result list.
ERROR_KEY = "__snakepit_error__"
#: Characters of a remote traceback an error item keeps (its tail).
TRACEBACK_CHARS = 2000


def _parts(exc: BaseException) -> tuple[str, str, str, str]:
    """(message, class, remote type, remote traceback) of an item's error."""
    if isinstance(exc, BatchItemError):
        return exc.message, exc.error_class, exc.remote_type, exc.remote_traceback
    if isinstance(exc, SnakepitError):
        return (
            exc.message,
            type(exc).__name__,
            str(getattr(exc, "remote_type", "") or ""),
            str(getattr(exc, "remote_traceback", "") or ""),
        )
    return str(exc), type(exc).__name__, "", ""


def batch_item_error(exc: BaseException, index: int) -> BatchItemError:
    """The batch's error for item ``index`` that failed with ``exc``."""
    message, cls, remote_type, traceback = _parts(exc)
    return BatchItemError(message, index, cls, remote_type, traceback)


def error_item(exc: BaseException, index: int) -> dict[str, Any]:
    """The JSON object that stands in a result list for item ``index`` that failed with ``exc``.

    Example::

        {"__snakepit_error__": True, "index": 7, "class": "CommandError",
         "type": "ZeroDivisionError", "message": "division by zero",
         "retryable": False, "traceback": "Traceback ..."}
    """
    message, cls, remote_type, traceback = _parts(exc)
    return {
        ERROR_KEY: True,
        "index": index,
        "class": cls,
        "type": remote_type or cls,
        "message": message,
        "retryable": isinstance(exc, InfrastructureError) or bool(getattr(exc, "retryable", False)),
        "traceback": traceback[-TRACEBACK_CHARS:],
    }


def item_error(value: Any) -> BatchItemError | None:
    """The error an item failed with, if ``value`` is an error item; else None.

    Example::

        results = batch_map("compute", rows, return_exceptions=True).delay().get()
        failed = [e for r in results if (e := item_error(r)) is not None]
    """
    if not (isinstance(value, dict) and value.get(ERROR_KEY) is True):
        return None
    cls = str(value.get("class", ""))
    remote_type = str(value.get("type", ""))
    return BatchItemError(
        str(value.get("message", "")),
        int(value.get("index", -1)),
        cls,
        "" if remote_type == cls else remote_type,
        str(value.get("traceback", "")),
    )


class Batch:
    """The items of one ``execute_batch`` call while threads run them.

    Args:
        items: the arguments of each call, in input order.
        offset: the index of ``items[0]`` in the whole input (a map's chunk).
        return_exceptions: put error items in place of failures instead of stopping.
    """

    def __init__(self, items: Sequence[Any], *, offset: int = 0, return_exceptions: bool = False) -> None:
        self.items = items
        self.offset = offset
        self.return_exceptions = return_exceptions
        self.results: list[Any] = [None] * len(items)
        #: Items finished (a result or an error item), and of those, failed.
        self.done = 0
        self.failed = 0
        #: The error the batch stopped on (lowest failed index), if it did.
        self.error: BatchItemError | None = None
        #: Why the batch was stopped from outside (cancel, another chunk failed).
        self.stop_reason: BaseException | None = None
        self._next = 0
        self._running = 0
        self._stopped = False
        self._lock = threading.Lock()
        self.finished = threading.Event()
        if not items:
            self.finished.set()

    def claim_slice(self, size: int) -> range | None:
        """The next ``size`` items (fewer at the end) to run as one slice.

        None when there is none: all are claimed, or the batch stopped.
        """
        with self._lock:
            if self._stopped or self._next >= len(self.items):
                return None
            start = self._next
            self._next = min(len(self.items), start + size)
            self._running += self._next - start
            return range(start, self._next)

    def unclaim(self, count: int) -> None:
        """``count`` claimed items were not run (their slice stopped at an earlier failure)."""
        if count:
            with self._lock:
                self._running -= count
                self._check_finished()

    def finish(self, index: int, value: Any = None, exc: BaseException | None = None) -> None:
        """Record item ``index``'s result, or its error ``exc``."""
        absolute = self.offset + index
        # NOTE: the error is made before anything is counted, so a failure to make it
        # leaves the item claimed (its runner hands it back) and never half-finished.
        item: dict[str, Any] | None = None
        error: BatchItemError | None = None
        if exc is not None:
            if self.return_exceptions:
                item = error_item(exc, absolute)
            else:
                error = batch_item_error(exc, absolute)
        with self._lock:
            self._running -= 1
            self.done += 1
            if exc is None:
                self.results[index] = value
            else:
                self.failed += 1
                if item is not None:
                    self.results[index] = item
                elif error is not None and (self.error is None or absolute < self.error.index):
                    self.error = error
                    self._stopped = True
            self._check_finished()

    def stop(self, reason: BaseException) -> None:
        """Claim nothing more (items running go on to their end); ``reason`` is raised instead."""
        with self._lock:
            if self.stop_reason is None:
                self.stop_reason = reason
            self._stopped = True
            self._check_finished()

    def _check_finished(self) -> None:
        if self._running == 0 and (self._stopped or self._next >= len(self.items)):
            self.finished.set()

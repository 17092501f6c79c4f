"""What a relay reads: the :class:`ChunkSource` protocol and :class:`IterableSource`.

A source is an iterator of *messages* (lists of chunks, as a bridge's gRPC
``ExecuteStream`` sends them) that can be cancelled from another thread; the
pool's ``BridgeStream`` is one, :class:`IterableSource` wraps chunks produced
in the worker itself. :func:`read_source` is the relay's reader thread: it
opens the source (which may wait for a bridge) and moves its messages into
the relay's bounded inbox.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from snakepit_celery.errors import CommandCancelled

__all__ = ["ChunkSource", "End", "IterableSource", "Opening", "read_source"]


class ChunkSource(Protocol):
    """What the relay reads: the pool's ``BridgeStream`` or an :class:`IterableSource`."""

    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> Any: ...
    def __iter__(self) -> Iterator[list[Any]]: ...
    def cancel(self) -> None: ...


class IterableSource:
    """A chunk source over any Python iterable of chunks, one chunk per message.

    For streams produced in the worker itself (and the relay's own tests);
    ``cancel()`` takes effect before the next chunk is taken.
    """

    def __init__(self, chunks: Any) -> None:
        self._chunks = chunks
        self._cancelled = threading.Event()

    def __enter__(self) -> IterableSource:
        return self

    def __exit__(self, *exc: object) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def __iter__(self) -> Iterator[list[Any]]:
        for chunk in self._chunks:
            if self._cancelled.is_set():
                raise CommandCancelled("the stream was cancelled")
            yield [chunk]

    def cancel(self) -> None:
        self._cancelled.set()


class End:
    """Put by the reader when the source is exhausted or failed."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class Opening:
    """The source as the reader thread opens it; a cancel may come before it exists."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._source: ChunkSource | None = None
        self._cancelled = False

    @property
    def opened(self) -> bool:
        return self._source is not None

    def opened_as(self, source: ChunkSource) -> bool:
        """Record the opened source; False if it was cancelled meanwhile (then it is cancelled)."""
        with self._lock:
            self._source = source
            cancelled = self._cancelled
        if cancelled:
            with contextlib.suppress(Exception):
                source.cancel()
        return not cancelled

    def cancel(self) -> bool:
        """Cancel the source; False if it is not open yet (it will be cancelled once it is)."""
        with self._lock:
            self._cancelled = True
            source = self._source
        if source is None:
            return False
        with contextlib.suppress(Exception):
            source.cancel()
        return True


def read_source(
    open_source: Callable[[], ChunkSource],
    opening: Opening,
    inbox: queue.Queue[list[Any] | End],
    stop: threading.Event,
) -> None:
    """The reader thread: open the source, move its messages into the bounded inbox."""

    def put(item: list[Any] | End) -> bool:
        while not stop.is_set():
            try:
                inbox.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    end = End()
    try:
        source = open_source()
        with source:  # leaving it ends the source (a bridge stream gives its bridge back)
            if not opening.opened_as(source) or stop.is_set():
                return
            for message in source:
                if not put(list(message)):
                    source.cancel()
                    return
    except BaseException as exc:  # delivered to the writer, which decides what it means
        end = End(exc)
    put(end)

"""The owner's side: which session queues this worker consumes, and when.

A worker consumes a session's queue only while the session is in use. On a
Redis broker every consumed queue costs the worker on every message (kombu
sends one BRPOP naming them all, times the priority steps), so the consumer of
a session idle for ``consumer_idle`` seconds is released; the session stays
bound (lease, bridge state) and its next call wakes the owner through its wake
list in Redis (see :mod:`snakepit_celery.sessions.lease`). RabbitMQ pays
nothing per idle consumer, so there the consumer stays until expiry.

Consumers are added and cancelled only on the worker's event-loop thread
(kombu channels are not thread-safe): the other threads queue an operation and
ask the consumer to run :meth:`QueueSwitch.apply` soon.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from snakepit_celery.sessions.routing import session_queue

__all__ = ["LocalSession", "QueueSwitch"]

log = logging.getLogger(__name__)


@dataclass
class LocalSession:
    """What the owner knows about one of its sessions."""

    session_id: str
    pool: str
    #: Whether the queue's consumer is (or is about to be) on.
    consuming: bool = False
    #: Monotonic time of the last call received or finished.
    last_used: float = field(default_factory=time.monotonic)
    #: Monotonic time the consumer was released; None while consuming.
    released_at: float | None = None


#: Seconds the worker's BRPOP waits on a Redis broker before kombu sends it again,
#: naming the queues consumed by then (kombu's own is 1 s). A session queue whose
#: consumer is added meanwhile is read from the next BRPOP only, so this bounds how long
#: the first call of a new session (or of one whose idle consumer was released) waits
#: in its queue: 1 s before, about 0.1 s now. An idle worker sends ten BRPOPs a second.
BRPOP_TIMEOUT = 0.1


def _shorten_brpop(channel: Any) -> None:
    """Give a Redis broker channel the shorter :data:`BRPOP_TIMEOUT`; other brokers, and a
    Redis older than 6.0 (whose BRPOP takes whole seconds only), keep what they have."""
    timeout = getattr(channel, "brpop_timeout", None)
    if not isinstance(timeout, (int, float)) or timeout <= BRPOP_TIMEOUT:
        return
    try:  # the channel's own client is asynchronous (the poller reads it): a synchronous one
        with channel.conn_or_acquire() as client:
            version = str(client.info("server").get("redis_version", "0"))
    except Exception as exc:  # keep kombu's timeout: slower first calls, nothing broken
        log.debug("snakepit: the broker's Redis version is unknown (%s); BRPOP stays at %ss", exc, timeout)
        return
    if int(version.split(".")[0] or 0) >= 6:
        channel.brpop_timeout = BRPOP_TIMEOUT


class QueueSwitch:
    """Turns session-queue consumers on and off, on the consumer's own thread.

    Args:
        prefix: the queue prefix.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._ops: deque[tuple[str, str, threading.Event | None]] = deque()
        self._lock = threading.Lock()
        #: Queues this switch turned on and has not turned off, by session id.
        self._on: dict[str, Any] = {}
        self.consumer: Any = None

    def attach(self, consumer: Any) -> None:
        """Use ``consumer`` (on its thread): at start and after a reconnection,
        whose fresh task consumer knows none of the session queues."""
        self.consumer = consumer
        _shorten_brpop(getattr(getattr(consumer, "task_consumer", None), "channel", None))
        added = [self._add_queue(queue) for queue in list(self._on.values())]
        if any(added):
            self._start_consuming()
        self.apply()

    def detach(self) -> None:
        self.consumer = None

    def add(self, session_id: str) -> None:
        """Start consuming the session's queue (soon)."""
        self._submit("add", session_id, None)

    def cancel(self, session_id: str, done: threading.Event | None = None) -> None:
        """Stop consuming the session's queue (soon); ``done`` is set after."""
        self._submit("cancel", session_id, done)

    def _submit(self, op: str, session_id: str, done: threading.Event | None) -> None:
        with self._lock:
            self._ops.append((op, session_id, done))
        consumer = self.consumer
        if consumer is None:
            if done is not None:
                done.set()
            return
        # NOTE: the hub runs ready callbacks in no particular order, so each call
        # drains the FIFO here instead of carrying its own operation.
        consumer.call_soon(self.apply)

    def apply(self) -> None:
        """Run the queued operations in order (called on the consumer's thread).

        The queues added are consumed together at the end: kombu's ``consume()``
        goes over every queue of the consumer, so once per queue would cost a
        takeover of n sessions n² steps on the event loop.
        """
        added: list[threading.Event | None] = []
        try:
            self._apply(added)
        finally:
            self._flush(added)

    def _flush(self, added: list[threading.Event | None]) -> None:
        """Consume the queues added so far."""
        if not added:
            return
        try:
            self._start_consuming()
        except Exception:
            log.exception("consuming %d session queue(s) failed", len(added))
        for done in added:
            if done is not None:
                done.set()
        added.clear()

    def _apply(self, added: list[threading.Event | None]) -> None:
        while True:
            with self._lock:
                if not self._ops:
                    return
                op, session_id, done = self._ops.popleft()
            try:
                if op == "add":
                    if session_id not in self._on:
                        queue = session_queue(self.prefix, session_id)
                        self._on[session_id] = queue
                        if self._add_queue(queue):
                            added.append(done)
                            done = None  # set once the queue is consumed
                elif session_id in self._on:
                    self._flush(added)  # a queue added just before is consumed, then cancelled
                    queue = self._on.pop(session_id)
                    task_consumer = getattr(self.consumer, "task_consumer", None)
                    if task_consumer is not None and task_consumer.consuming_from(queue.name):
                        task_consumer.cancel_by_queue(queue.name)
            except Exception:
                log.exception("session queue %s of %s failed", op, session_id)
            finally:
                if done is not None:
                    done.set()

    def _add_queue(self, queue: Any) -> bool:
        """Add the queue to the task consumer (consumed by :meth:`_start_consuming`);
        False when there is no consumer or it consumes the queue already."""
        task_consumer = getattr(self.consumer, "task_consumer", None)
        if task_consumer is None or task_consumer.consuming_from(queue.name):
            return False
        # Not through Celery's add_task_queue: its queue table would bind the
        # queue to the default exchange (a _kombu.binding entry on Redis).
        task_consumer.add_queue(queue)
        return True

    def _start_consuming(self) -> None:
        task_consumer = getattr(self.consumer, "task_consumer", None)
        if task_consumer is not None:
            task_consumer.consume()  # the queues added since the last call

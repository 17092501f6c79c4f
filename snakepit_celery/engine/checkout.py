"""Borrowing a bridge: a FIFO hand-off queue with exact limits.

A free slot goes straight to the oldest waiter that can take it (any slot,
or the one its session is pinned to); only when no waiter can take it does
it join the idle list. So an idle slot never coexists with a waiter that
could use it, the fast path is one lock and one ``pop``, and nobody polls.
Waiters are served oldest first, but idle slots newest first (last in,
first out): at low load one bridge serves call after call while its threads
and caches are still warm, instead of each call waking the bridge that has
been idle longest. The limits are exact because both decisions happen under
the lock: a caller that finds ``max_queue`` callers already waiting is
refused at once (``PoolSaturated``), and a waiter whose queue timeout passes
removes itself before any slot can be handed to it, so it never runs later
(``QueueTimeout``). A waiter that was handed a slot just as its time ran
out keeps the slot: it was served in time.

A slot is never handed out with a bridge known to be dead: the moment of
hand-off (taking an idle slot, or offering one to a waiter) asks the bridge
(:meth:`Bridge.known_dead`, one non-blocking ``poll(2)`` on its pidfd), and
a dead one goes to the pool's ``on_dead`` for replacement instead. The
caller then takes another slot or waits, with its place and deadline, for
one (its session's slot: the replacement). This closes the window between a
bridge's death and the supervisor's notice, in which a call that never
reached a living bridge would otherwise fail with ``BridgeCrashed``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from snakepit_celery.errors import (
    CommandCancelled,
    InfrastructureError,
    PoolSaturated,
    QueueTimeout,
    SnakepitError,
)

if TYPE_CHECKING:
    from snakepit_celery.engine.bridge import Bridge
    from snakepit_celery.engine.cancels import Ticket

__all__ = ["Slot", "SlotQueue"]


class Slot:
    """One place in a pool: the bridge it runs now, and the sessions pinned to it.

    All fields are guarded by the pool's lock.
    """

    __slots__ = ("bridge", "gen", "index", "recycle", "sessions", "state")

    def __init__(self, index: int) -> None:
        self.index = index
        #: Bumped at every replacement; a start of an older generation is void.
        self.gen = 0
        self.bridge: Bridge | None = None
        #: "starting", "idle", "busy" or "closed".
        self.state = "starting"
        self.sessions: set[str] = set()
        #: Replace the bridge when its current call ends.
        self.recycle = False

    def __repr__(self) -> str:
        pid = self.bridge.pid if self.bridge else None
        return f"<Slot {self.index} {self.state} pid={pid}>"


#: An error to raise, kept as its class and message: each caller raises an
#: instance of its own, since one instance raised in many threads would share
#: (and keep growing) one traceback and have its ``__context__`` overwritten.
Refusal: TypeAlias = tuple[type[SnakepitError], str]


_CANCELLED_WAITING = "the call was cancelled while it waited for a bridge; it never started"


class _Waiter:
    __slots__ = ("cond", "error", "slot", "wanted")

    def __init__(self, wanted: Slot | None, lock: threading.Lock) -> None:
        self.wanted = wanted
        self.slot: Slot | None = None
        self.error: Refusal | None = None
        self.cond = threading.Condition(lock)


class SlotQueue:
    """Idle slots and waiting callers of one pool, guarded by the pool's lock."""

    def __init__(
        self,
        lock: threading.Lock,
        *,
        pool: str,
        max_queue: int,
        queue_timeout: float,
        on_dead: Callable[[Slot], None],
    ) -> None:
        self.lock = lock
        #: Called (lock held) with a slot taken out of circulation because its
        #: bridge is dead; it must start the slot's replacement.
        self.on_dead = on_dead
        self.pool = pool
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.idle: deque[Slot] = deque()
        self.waiters: deque[_Waiter] = deque()
        #: Set when new callers are refused (draining or closed).
        self.refusing: Refusal | None = None
        #: Calls refused because the queue was full.
        self.pool_saturated = 0
        #: Calls that waited past the queue timeout.
        self.queue_timeouts = 0

    def acquire(self, wanted: Slot | None = None, ticket: Ticket | None = None) -> tuple[Slot, float]:
        """Borrow a slot (``wanted``, or any); returns it and the seconds waited.

        A ``ticket``'s cancel withdraws the caller from the queue (see :mod:`snakepit_celery.engine.cancels`).

        Raises:
            CommandCancelled: the ticket was cancelled while the caller waited.
            PoolSaturated: ``max_queue`` callers are already waiting.
            QueueTimeout: no slot came free within the queue timeout.
            InfrastructureError: the pool closed (``PoolClosed``) meanwhile.
        """
        with self.lock:
            if self.refusing is not None:
                cls, message = self.refusing
                raise cls(message)
            if wanted is None:
                while self.idle:
                    slot = self.idle.pop()
                    if self._take(slot):
                        return slot, 0.0
            elif wanted.state == "idle":
                self.idle.remove(wanted)
                if self._take(wanted):
                    return wanted, 0.0
            if self.max_queue and len(self.waiters) >= self.max_queue:
                self.pool_saturated += 1
                raise PoolSaturated(
                    f"pool {self.pool!r}: {len(self.waiters)} calls already wait for a bridge "
                    f"(max_queue={self.max_queue})"
                )
            waiter = _Waiter(wanted, self.lock)
            self.waiters.append(waiter)
            if ticket is not None:
                held = ticket
                ticket.withdraw = lambda: self._withdraw(waiter, held)
                if ticket.cancelled:  # set before withdraw was: nobody else will see this place
                    self.waiters.remove(waiter)
                    raise CommandCancelled(_CANCELLED_WAITING)
            start = time.monotonic()
            deadline = start + self.queue_timeout if self.queue_timeout else None
            while waiter.slot is None:
                if waiter.error is not None:
                    cls, message = waiter.error
                    raise cls(message)
                if deadline is None:
                    waiter.cond.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.waiters.remove(waiter)
                    self.queue_timeouts += 1
                    raise QueueTimeout(
                        f"pool {self.pool!r}: no bridge came free within "
                        f"{self.queue_timeout}s (queue_timeout)"
                    )
                waiter.cond.wait(remaining)
            return waiter.slot, time.monotonic() - start

    def _withdraw(self, waiter: _Waiter, ticket: Ticket) -> None:
        """Take a cancelled caller out of the queue; it raises ``CommandCancelled``."""
        with self.lock:
            ticket.withdraw = None
            if waiter.slot is None and waiter.error is None and waiter in self.waiters:
                self.waiters.remove(waiter)
                waiter.error = (CommandCancelled, _CANCELLED_WAITING)
                waiter.cond.notify()

    def offer(self, slot: Slot) -> None:
        """Hand a ready slot to the oldest waiter that can take it, else make it idle.

        The caller holds the lock.
        """
        for i, waiter in enumerate(self.waiters):
            if waiter.wanted is None or waiter.wanted is slot:
                if not self._take(slot):
                    return  # being replaced; the waiter keeps its place
                del self.waiters[i]
                waiter.slot = slot
                waiter.cond.notify()
                return
        slot.state = "idle"
        self.idle.append(slot)

    def _take(self, slot: Slot) -> bool:
        """Mark a slot that is out of the idle list busy, unless its bridge is dead. Lock held.

        A dead one goes to ``on_dead`` (replacement) and False is returned.
        """
        bridge = slot.bridge
        if bridge is not None and bridge.known_dead():
            self.on_dead(slot)
            return False
        slot.state = "busy"
        return True

    def discard_idle(self, slot: Slot) -> None:
        """Take an idle slot out of the idle list (its bridge is going away). Lock held."""
        if slot.state == "idle":
            self.idle.remove(slot)

    def refuse(self, error: type[InfrastructureError], message: str) -> None:
        """Refuse new callers with ``error(message)``; those already waiting keep their place. Lock held."""
        self.refusing = (error, message)

    def close(self, error: type[InfrastructureError], message: str) -> None:
        """Refuse new callers and wake every waiter with ``error(message)``. Lock held."""
        self.refusing = (error, message)
        for waiter in self.waiters:
            waiter.error = (error, message)
            waiter.cond.notify()
        self.waiters.clear()
        self.idle.clear()

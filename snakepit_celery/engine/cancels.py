"""Cancelling a unary pool call by its request id (the Celery task id) from another thread.

Celery's ``revoke`` only flags an id (``celery.worker.state.revoked``): a
message not yet started is dropped, one already running goes on. The
worker's ``revoke`` control command (:mod:`snakepit_celery.integration.worker`) therefore
also calls :func:`cancel_call`, and a call of :meth:`BridgePool.execute` that
carries a request id holds a :class:`Ticket` here while it runs, which says
where the call is:

* waiting for a bridge: its place in the queue is withdrawn and the call ends
  with ``CommandCancelled``; it never starts;
* on a bridge: its gRPC call is cancelled (its channel is closed, see
  :meth:`~snakepit_celery.bridge.Bridge.interrupt_execute`). The bridge's handler sees it (the
  Python SDK sets ``context.cancelled`` and cancels an async command's task;
  the Node.js SDK aborts ``ctx.signal``), and the pool keeps the bridge
  borrowed until the bridge reports the command ended, or kills and replaces
  it after ``cancel_grace``, as for a closed stream
  (:meth:`~snakepit_celery.engine.loan.Loan.settle`).

A cancel that comes before its call holds a ticket (the revoke raced the
task's start) is remembered, for the last :data:`REMEMBERED` ids, and the call
ends as soon as it takes its ticket.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from snakepit_celery.errors import CommandCancelled

__all__ = ["REMEMBERED", "CallCancels", "Ticket", "cancel_call", "cancels"]

#: Cancels of ids not (yet) running here that are kept for a call that starts late.
REMEMBERED = 4096


class Ticket:
    """One running call's cancel: what it waits on now.

    ``withdraw`` is set (under the pool's lock) while the call waits for a
    bridge; ``interrupt`` while a gRPC call runs on one (:meth:`attempt`).
    ``cancel`` sets ``cancelled`` before it reads either, and each is checked
    after it is set, so a cancel never falls between the two. ``interrupt``
    is set, run and cleared under the ticket's lock: a cancel that comes as
    the call ends cannot interrupt the next call the bridge runs.
    """

    __slots__ = ("_lock", "cancelled", "interrupt", "interrupted", "request_id", "withdraw")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.cancelled = False
        #: Takes the call's place out of the pool's queue (it then raises ``CommandCancelled``).
        self.withdraw: Callable[[], None] | None = None
        #: Stops the gRPC call in flight (:meth:`Bridge.interrupt_execute`).
        self.interrupt: Callable[[], None] | None = None
        #: ``interrupt`` was run: the bridge's unary channel must be reopened.
        self.interrupted = False
        self._lock = threading.Lock()

    def attempt(
        self, interrupt: Callable[[], None], call: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """``call(*args, **kwargs)``, which a cancel stops by running ``interrupt``.

        Raises:
            CommandCancelled: the cancel came before the call was made.
        """
        with self._lock:
            if self.cancelled:
                raise CommandCancelled("the call was cancelled before it started")
            self.interrupt = interrupt
        try:
            return call(*args, **kwargs)
        finally:
            with self._lock:
                self.interrupt = None

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            interrupt = self.interrupt
            if interrupt is not None:
                self.interrupted = True
                interrupt()
        withdraw = self.withdraw
        if withdraw is not None:
            withdraw()


class CallCancels:
    """The tickets of the calls running in this process, by request id; thread-safe."""

    def __init__(self, remembered: int = REMEMBERED) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, Ticket] = {}
        self._early: OrderedDict[str, None] = OrderedDict()
        self._remembered = remembered

    def enter(self, request_id: str) -> Ticket:
        """A ticket for a call that starts now (already cancelled if its cancel came first)."""
        ticket = Ticket(request_id)
        with self._lock:
            self._calls[request_id] = ticket
            if request_id in self._early:
                del self._early[request_id]
                ticket.cancelled = True
        return ticket

    def leave(self, ticket: Ticket) -> None:
        """The call is over: its id is no longer cancellable."""
        with self._lock:
            if self._calls.get(ticket.request_id) is ticket:
                del self._calls[ticket.request_id]

    def cancel(self, request_id: str) -> bool:
        """Cancel the call ``request_id``; False when none runs here (the cancel is then kept)."""
        with self._lock:
            ticket = self._calls.get(request_id)
            if ticket is None:
                self._early[request_id] = None
                while len(self._early) > self._remembered:
                    self._early.popitem(last=False)
                return False
        ticket.cancel()
        return True


#: The process's registry: every pool's calls, cancelled by the worker's revoke.
cancels = CallCancels()


def cancel_call(request_id: str) -> bool:
    """Cancel the unary call ``request_id`` running (or about to run) in this process.

    Args:
        request_id: the call's request id (for a task, its Celery task id).

    Returns:
        True when such a call was running here (it ends with ``CommandCancelled``);
        False when none was (a call with that id that starts later ends at once).
    """
    return cancels.cancel(request_id)

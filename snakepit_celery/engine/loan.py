"""A bridge lent by the pool for one call: the one interface the call paths use.

The call paths (unary in :mod:`~snakepit_celery.engine.pool`, stream in
:mod:`~snakepit_celery.engine.bridge_stream`, batch in
:mod:`~snakepit_celery.engine.pool_batch`) and the judge of a failed try
(:mod:`~snakepit_celery.engine.failures`) never touch the pool's slots, lock or
counters: :meth:`BridgePool.lend <snakepit_celery.engine.pool.BridgePool.lend>`
hands them a :class:`Loan`, and everything they may do with the borrowed bridge
goes through it. Each loan ends exactly once: ``release()`` (given back,
recycled, or replaced when ``broken``) or ``settle()`` (given back once a
cancelled command has really stopped on the bridge).

Example::

    loan = pool.lend(session_id)
    try:
        loan.ensure_session(session_id, timeout)
        reply = loan.bridge.execute_raw(request, timeout=timeout)
    except BaseException:
        loan.release(failed=True)
        raise
    else:
        loan.release()
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from snakepit_celery.errors import (
    BridgeCrashed,
    CommandCancelled,
    CommandTimeout,
    PoolSaturated,
    QueueTimeout,
)

if TYPE_CHECKING:
    from snakepit_celery.config import PoolConfig
    from snakepit_celery.engine.bridge import Bridge
    from snakepit_celery.engine.checkout import Slot
    from snakepit_celery.engine.pool import BridgePool
    from snakepit_celery.engine.telemetry import Telemetry

__all__ = ["Loan", "outcome_of"]

log = logging.getLogger("snakepit_celery.pool")

#: Seconds between looks at a cancelled call's bridge.
SETTLE_POLL = 0.015
#: Longest wait for one Describe answer; a bridge whose only thread is busy
#: (Node.js in a synchronous loop) answers none until the grace ends.
_DESCRIBE_TIMEOUT = 0.5

#: The outcome a call's error is reported with (telemetry, traces); any other: ``"error"``.
_OUTCOME: dict[type[BaseException], str] = {
    BridgeCrashed: "crashed",
    CommandTimeout: "timeout",
    QueueTimeout: "queue_timeout",
    PoolSaturated: "saturated",
    CommandCancelled: "cancelled",
}


def outcome_of(exc: BaseException) -> str:
    """The outcome of a call that raised ``exc``: ``"crashed"``, ``"timeout"``, …, else ``"error"``."""
    return _OUTCOME.get(type(exc), "error")


class Loan:
    """One bridge of ``pool`` borrowed for one call; ended by ``release`` or ``settle``."""

    __slots__ = ("_pool", "bridge", "slot")

    def __init__(self, pool: BridgePool, slot: Slot) -> None:
        self._pool = pool
        #: The slot lent (busy until the loan ends).
        self.slot = slot
        bridge: Bridge = slot.bridge  # type: ignore[assignment]  # a lent slot has its bridge
        #: The bridge to call.
        self.bridge = bridge

    @property
    def pid(self) -> int:
        """The borrowed bridge's process id."""
        return self.bridge.pid

    @property
    def pool_name(self) -> str:
        """The lending pool's name (errors name it)."""
        return self._pool.name

    @property
    def config(self) -> PoolConfig:
        """The lending pool's config."""
        return self._pool.config

    @property
    def telemetry(self) -> Telemetry:
        """The lending pool's telemetry (the call paths report through it)."""
        return self._pool.telemetry

    @property
    def pool_closed(self) -> bool:
        """Whether the pool was closed (a failure then reads ``PoolClosed``)."""
        return self._pool._closed

    def ensure_session(self, session_id: str | None, timeout: float | None) -> None:
        """Open ``session_id`` on the bridge (InitSession, with its stored data) unless it is open."""
        if session_id is not None and session_id not in self.bridge.sessions:
            self._pool._init_session(self.bridge, session_id, timeout)

    def release(self, *, failed: bool = False, broken: str | None = None, counted: bool = True) -> None:
        """Give the bridge back: recycled when due, replaced (killed) when ``broken`` says why.

        Args:
            failed: the call failed (an error in the pool's stats).
            broken: why the bridge cannot serve again; it is replaced.
            counted: False when the call never reached the bridge and runs again: not a request.
        """
        self._pool._release(self.slot, self.bridge, failed=failed, broken=broken, counted=counted)

    def finished(
        self, command: str, started: float, outcome: str, session_id: str | None, request_id: str | None
    ) -> None:
        """Report the call over (``request_finished``), after the loan ended or not."""
        self._pool._finished(command, started, outcome, session_id, request_id)

    def count(self, requests: int, errors: int) -> None:
        """Count ``requests`` calls run on the bridge (``errors`` of them failed) before it is given
        back with ``release(counted=False)``: a batch's items are each a request."""
        self.bridge.requests += requests
        pool = self._pool
        with pool._lock:
            pool._requests += requests
            pool._errors += errors

    def settle(self, command: str) -> None:
        """Give the bridge back once the cancelled ``command`` has ended on it; never blocks.

        Until then the slot stays busy (``drain`` waits for it, a session pinned
        to it queues). Past ``cancel_grace`` the bridge is killed and replaced
        (a restart; its exit reason starts with "ignored cancel").
        """
        pool = self._pool
        with pool._lock:
            closed = pool._closed
            if not closed:
                pool._spawn_thread(
                    f"snakepit-settle-{pool.name}-{self.slot.index}", lambda: self._settle(command)
                )
        if closed:
            self.release()

    def _settle(self, command: str) -> None:
        pool, bridge = self._pool, self.bridge
        grace = pool.config.cancel_grace
        deadline = time.monotonic() + grace
        try:
            while not (bridge.exited or pool._closed):
                remaining = deadline - time.monotonic()
                if bridge.active_calls(min(_DESCRIBE_TIMEOUT, max(remaining, SETTLE_POLL))) == 0:
                    break
                if time.monotonic() >= deadline:
                    reason = f"ignored cancel: {command!r} still ran {grace}s after its stream was cancelled"
                    log.warning("pool %s: bridge pid %d %s; replacing it", pool.name, bridge.pid, reason)
                    bridge.exit_reason = reason
                    bridge.kill()
                    self.release(broken=reason)
                    return
                pool._closing.wait(SETTLE_POLL)
        except BaseException:  # a bug here must not keep the slot borrowed forever
            log.exception("pool %s: settling a cancelled %r failed", pool.name, command)
        # Given back; a bridge that exited meanwhile is replaced by the release.
        self.release()

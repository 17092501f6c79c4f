"""What a failed call on a bridge means: the caller's error, and the bridge's fate.

A failure the bridge reported (an ``ErrorDetail``) leaves the bridge in
service. Anything else is the bridge's fault and costs it its place: past
the hard timeout it is killed (``CommandTimeout``); otherwise it died, or
is killed because its connection failed, and the caller gets
``BridgeCrashed``, since the command may have run, wholly or in part.

The one failure that proves a command did not run is a call that never left
this process: gRPC found no connection to the bridge's socket and the
process is gone (:func:`~snakepit_celery.engine.rpc.never_sent`), or the channel
was already dropped because the supervisor had seen the exit. Such a call
is run once more on another bridge (:func:`unsent`), idempotent or not.

:class:`Attempts` is that decision, for ``execute`` and ``execute_batch``
alike: a failed try is settled (the slot given back or its bridge replaced)
and either run again or turned into the error to raise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from snakepit_celery.engine.rpc import map_rpc_error, never_sent
from snakepit_celery.errors import (
    BridgeCrashed,
    CommandCancelled,
    CommandTimeout,
    PoolClosed,
    SnakepitError,
)

if TYPE_CHECKING:
    from snakepit_celery.engine.bridge import Bridge
    from snakepit_celery.engine.loan import Loan

__all__ = ["Attempts", "confirm_death", "crashed", "rpc_failed", "unsent"]

#: Seconds a failed call waits to see the bridge's exit before calling it a crash.
CRASH_CONFIRM = 0.5


def confirm_death(bridge: Bridge) -> bool:
    """True if the bridge's process has exited, waiting up to ``CRASH_CONFIRM`` for it."""
    return bridge.known_dead() or bridge.process.has_exited(CRASH_CONFIRM)


def rpc_failed(
    loan: Loan,
    exc: grpc.RpcError,
    command: str,
    hard: float,
    *,
    cancelled: bool = False,
) -> SnakepitError:
    """Turn a failed call into the error to raise, ending the loan (given back, or its bridge replaced)."""
    bridge = loan.bridge
    mapped = map_rpc_error(exc, command=command, limit=loan.config.max_payload_bytes)
    if mapped is not None:
        loan.release(failed=True)
        return mapped
    code = exc.code() if hasattr(exc, "code") else None
    if cancelled and code == grpc.StatusCode.CANCELLED:
        loan.settle(command)
        return CommandCancelled(f"{command!r} was cancelled by the caller")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and hard:
        bridge.exit_reason = f"killed: {command!r} ran past its hard timeout of {hard}s"
        bridge.kill()
        loan.release(failed=True, broken=bridge.exit_reason)
        return CommandTimeout(
            f"{command!r} ran past its hard timeout of {hard}s; bridge pid {bridge.pid} was killed "
            "and is being replaced"
        )
    return crashed(loan, exc, command, died=confirm_death(bridge))


def crashed(loan: Loan, exc: grpc.RpcError, command: str, *, died: bool) -> SnakepitError:
    """The call failed with its bridge: kill and replace it; ``BridgeCrashed`` for the caller."""
    bridge, pool = loan.bridge, loan.pool_name
    code = exc.code() if hasattr(exc, "code") else None
    if not died:
        bridge.exit_reason = f"killed: its connection failed during {command!r}"
    bridge.kill()
    loan.release(failed=True, broken="crashed")
    if loan.pool_closed:
        return PoolClosed(f"pool {pool!r} closed while {command!r} was running")
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return BridgeCrashed(
        f"pool {pool!r}: bridge pid {bridge.pid} {'died' if died else 'stopped answering'} "
        f"during {command!r} ({code.name if code else 'error'}: {details}); it is being replaced"
    )


def unsent(loan: Loan, command: str, *, last: bool) -> SnakepitError:
    """The bridge had died before ``command`` was sent to it: replace it.

    Unless this was the ``last`` try, the caller runs the call again and the
    error is not raised, so this try counts neither as a request nor as an
    error (the replacement is a restart like any other).
    """
    bridge, pool = loan.bridge, loan.pool_name
    bridge.kill()
    loan.release(failed=last, broken="crashed", counted=last)
    if loan.pool_closed:
        return PoolClosed(f"pool {pool!r} closed before {command!r} could run")
    return BridgeCrashed(
        f"pool {pool!r}: bridge pid {bridge.pid} had died before {command!r} could be sent to it, "
        "and so had the one of its first try; it is being replaced"
    )


class Attempts:
    """Whether a call whose try failed runs again: the one retry decision of the pool.

    A try that provably never reached its bridge runs once more, idempotent
    or not; a try whose bridge crashed runs once more only if the caller said
    the call is ``idempotent``. Each allowance is used at most once.
    """

    __slots__ = ("rerun", "retry")

    def __init__(self, *, idempotent: bool) -> None:
        #: A crashed try may run again (idempotent calls only).
        self.retry = idempotent
        #: A try that never reached its bridge may run again.
        self.rerun = True

    def failed(
        self,
        loan: Loan,
        exc: grpc.RpcError | ValueError,
        command: str,
        hard: float,
    ) -> SnakepitError | None:
        """Settle a try that failed with ``exc``: None to run the call again, else its error.

        The loan ends: given back, or its bridge killed and replaced.

        Raises:
            ValueError: ``exc`` itself, when it is not about the bridge (its
                channel is open): the caller's mistake, raised as it is.
        """
        bridge = loan.bridge
        was_unsent = False
        if isinstance(exc, grpc.RpcError):
            if not never_sent(exc):
                error = rpc_failed(loan, exc, command, hard)
            elif was_unsent := confirm_death(bridge):
                error = unsent(loan, command, last=not self.rerun)
            else:
                error = crashed(loan, exc, command, died=False)
        elif bridge.channel_closed:
            # NOTE: the supervisor drops the channel once it saw the exit, and gRPC
            # refuses a call on a closed channel before sending anything.
            was_unsent = True
            error = unsent(loan, command, last=not self.rerun)
        else:
            loan.release(failed=True)
            raise exc
        if was_unsent and self.rerun:
            self.rerun = False
            return None
        if self.retry and type(error) is BridgeCrashed:
            self.retry = False
            return None
        return error

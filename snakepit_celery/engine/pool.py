"""BridgePool: borrow a warm bridge for one call, with every failure accounted for.

The call path is kept lean on purpose (the pool must add little to a raw
gRPC call): encode, one lock to borrow a slot, the call on the bridge's
long-lived stub, one lock to give it back, decode. Everything else happens
off that path: the supervisor thread replaces dead bridges, start threads
bring new ones up, and recycling (``max_requests``, ``max_memory_mb``) is
decided when a call gives its slot back, so queued calls simply wait for
the replacement instead of failing.

A call runs twice only when that is safe: once more on a fresh bridge if
the caller said it is idempotent, or if it provably never reached its
bridge (see :mod:`snakepit_celery.engine.failures`). A call that may have
started on a bridge that died fails with ``BridgeCrashed``.

Example::

    pool = BridgePool(PoolConfig(size=4), run_dir=Path("/run/x"), run_id="r1")
    pool.start()
    pool.execute("compute", {"operation": "add", "a": 5, "b": 3})  # {"result": 8, ...}
    pool.close()
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from snakepit_bridge._proto import bridge_pb2

from snakepit_celery.config import PoolConfig
from snakepit_celery.engine.bridge import Bridge
from snakepit_celery.engine.bridge_stream import BridgeStream
from snakepit_celery.engine.cancels import Ticket, cancels
from snakepit_celery.engine.checkout import Slot
from snakepit_celery.engine.failures import Attempts, rpc_failed
from snakepit_celery.engine.lifecycle import PoolLifecycle
from snakepit_celery.engine.loan import Loan, outcome_of
from snakepit_celery.engine.pool_batch import run_batch
from snakepit_celery.engine.rpc import decode_execute_reply, encode_payload, execute_request
from snakepit_celery.engine.telemetry import Telemetry
from snakepit_celery.errors import (
    BridgeStartError,
    CommandCancelled,
    InfrastructureError,
    PoolClosed,
    SnakepitError,
)

__all__ = ["BridgePool"]

_MIB = 1024 * 1024


class BridgePool(PoolLifecycle):
    """A named pool of bridge processes of one adapter; thread-safe."""

    def __init__(
        self,
        config: PoolConfig,
        *,
        run_dir: Path,
        run_id: str,
        telemetry: Telemetry | None = None,
        session_loader: Callable[[str], dict[str, Any] | None] | None = None,
    ) -> None:
        super().__init__(config, run_dir=run_dir, run_id=run_id, telemetry=telemetry)
        self._session_loader = session_loader
        self._sessions: dict[str, Slot] = {}
        self._payload_limit = config.max_payload_bytes
        self._max_requests = config.max_requests
        self._max_rss = config.max_memory_mb * _MIB
        self._requests = 0
        self._errors = 0
        self._draining = False

    # -- borrowing -------------------------------------------------------------
    # NOTE: the call paths reach _release, _init_session and _finished only through
    # the Loan that lend() returns (engine/loan.py), which ends each loan once.

    def lend(self, session_id: str | None, ticket: Ticket | None = None) -> Loan:
        """A free bridge (or the session's, pinned to one on its first call) for one call.

        Raises:
            PoolSaturated, QueueTimeout, PoolClosed: none became free (see ``checkout``).
            CommandCancelled: ``ticket`` was cancelled while it waited.
        """
        return Loan(self, self._checkout(session_id, ticket))

    def _checkout(self, session_id: str | None, ticket: Ticket | None = None) -> Slot:
        wanted = None
        if session_id is not None:
            with self._lock:
                wanted = self._sessions.get(session_id)
                if wanted is None:
                    wanted = min(self._slots, key=lambda s: len(s.sessions))
                    wanted.sessions.add(session_id)
                    self._sessions[session_id] = wanted
        slot, waited = self._queue.acquire(wanted, ticket)
        if waited:
            self.telemetry.queue_wait(pool=self.name, wait=waited)
        return slot

    def _release(
        self,
        slot: Slot,
        bridge: Bridge,
        *,
        failed: bool = False,
        broken: str | None = None,
        counted: bool = True,
    ) -> None:
        """Give a slot back after a call; recycle or replace its bridge when due.

        ``counted=False``: the call never reached the bridge and runs again; not a request.
        """
        bridge.requests += counted
        reason = broken
        if reason is None:
            if self._max_requests and bridge.requests >= self._max_requests:
                reason = f"recycled after {bridge.requests} requests (max_requests)"
            elif self._max_rss:
                rss = bridge.rss_bytes()
                if rss is not None and rss > self._max_rss:
                    reason = f"recycled at {rss // _MIB} MiB (max_memory_mb={self.config.max_memory_mb})"
        with self._lock:
            self._requests += counted
            if failed:
                self._errors += 1
            if self._closed:
                pass
            elif reason is not None or slot.recycle or bridge.exited:
                why = reason or ("restart requested" if slot.recycle else bridge.exit_reason or "exited")
                self._replace_locked(slot, bridge, why, kill=broken is not None)
            else:
                self._queue.offer(slot)
            if self._draining:
                self._changed.notify_all()

    def _init_session(self, bridge: Bridge, session_id: str, timeout: float | None) -> None:
        data = self._session_loader(session_id) if self._session_loader else None
        payload = encode_payload(data, limit=self._payload_limit, what="session data") if data else None
        bridge.init_session(session_id, payload or bridge_pb2.Payload(), timeout)

    def _finished(
        self, command: str, started: float, outcome: str, session_id: str | None, request_id: str | None
    ) -> None:
        self.telemetry.request_finished(
            pool=self.name,
            command=command,
            duration=time.monotonic() - started,
            outcome=outcome,
            session_id=session_id,
            request_id=request_id,
        )

    # -- calls -----------------------------------------------------------------

    def execute(
        self,
        command: str,
        args: Any = None,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        request_id: str | None = None,
        idempotent: bool = False,
        on_begin: Callable[[], Callable[[], None] | None] | None = None,
        resolve_args: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Run ``command`` on a free bridge (or the session's) and return its result.

        Args:
            command: the command name.
            args: its arguments (a JSON-able object; bytes allowed).
            timeout: hard limit in seconds; else ``command_timeouts``, else the pool's.
            session_id: pin the call to the session's bridge (InitSession first on a new one).
            request_id: the caller's id (a Celery task id), for the bridge's logs; with
                it the call can be cancelled from another thread
                (:func:`snakepit_celery.engine.cancels.cancel_call`, the worker's ``revoke``).
            idempotent: a call whose bridge crashed is run once more on a fresh bridge
                (one that never reached its bridge is, in any case).
            on_begin: called once the call has a bridge, before the bridge sees it
                (the task layer records there that the call began); what it raises
                ends the call, the bridge given back unused. What it returns, if
                not None, is called once when the call is over.
            resolve_args: ``args`` as the bridge must see them, called as the request
                is built (the task layer fetches a call's big bytes there, so that
                they live in the request alone; see ``payloads.taskrun.fetch_waiting``).
                What it raises ends the call before any bridge is borrowed.

        Raises:
            PoolSaturated, QueueTimeout, PoolClosed: no bridge was borrowed; never ran.
            BridgeCrashed: the bridge died during the call (it is being replaced).
            CommandTimeout: past the hard timeout; the bridge was killed and replaced.
            CommandCancelled: cancelled by its request id (waiting: it never started).
            CommandError, UnknownCommand, InvalidArguments, PayloadTooLarge: see errors.
        """
        started = time.monotonic()
        outcome = "error"
        error: BaseException | None = None
        after: Callable[[], None] | None = None
        refused = False
        ticket = cancels.enter(request_id) if request_id else None
        trace = self.telemetry.trace_call(
            pool=self.name, command=command, kind="execute", session_id=session_id, request_id=request_id
        )
        try:
            hard = self.config.hard_timeout(command, timeout)
            request = execute_request(
                command,
                args if resolve_args is None else resolve_args(args),
                limit=self._payload_limit,
                session_id=session_id or "",
                timeout=hard,
                request_id=request_id or "",
            )
            attempts = Attempts(idempotent=idempotent)
            while True:
                loan = self.lend(session_id, ticket)
                bridge = loan.bridge
                trace.checked_out(bridge.pid)
                if ticket is not None and ticket.cancelled:  # between the hand-off and here
                    loan.release(counted=False)
                    raise CommandCancelled(f"{command!r} was cancelled before it started")
                if on_begin is not None:
                    begin, on_begin = on_begin, None  # a retry on another bridge is the same call
                    try:
                        after = begin()
                    except BaseException:
                        loan.release(counted=False)
                        refused = True  # never reached a bridge: not one of this pool's requests
                        raise
                try:
                    loan.ensure_session(session_id, hard or None)
                    wait = hard or None
                    if ticket is None:
                        reply = bridge.execute_raw(request, timeout=wait, metadata=trace.metadata)
                    else:  # blocking, and interrupted from the cancelling thread
                        reply = ticket.attempt(
                            bridge.interrupt_execute, bridge.execute_raw, request,
                            timeout=wait, metadata=trace.metadata,
                        )  # fmt: skip
                except (grpc.RpcError, ValueError) as exc:
                    if ticket is not None and ticket.interrupted:
                        bridge.open_unary_channel()
                        loan.settle(command)  # given back once the bridge stopped it
                        raise CommandCancelled(f"{command!r} was cancelled while it ran") from None
                    error = attempts.failed(loan, exc, command, hard)
                except CommandCancelled:  # before the call was made: the bridge never saw it
                    loan.release(counted=False)
                    raise
                except BaseException:
                    loan.release(failed=True)
                    raise
                else:
                    if ticket is not None and ticket.interrupted:  # a cancel as the reply came
                        bridge.open_unary_channel()
                    loan.release()
                    del request  # the reply's blobs are copied out next: one copy fewer alive
                    result = decode_execute_reply(reply)
                    outcome = "ok"
                    return result
                if error is not None:
                    raise error from None
        except BaseException as exc:
            error = exc
            if isinstance(exc, SnakepitError):
                outcome = outcome_of(exc)
            raise
        finally:
            if ticket is not None:
                cancels.leave(ticket)
            if after is not None:
                after()
            trace.end(outcome, error)
            if not refused:
                self._finished(command, started, outcome, session_id, request_id)

    #: Many calls of one command on one borrowed bridge, in one message (``run_batch``).
    execute_batch = run_batch

    def stream(
        self,
        command: str,
        args: Any = None,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        request_id: str | None = None,
    ) -> BridgeStream:
        """Start a stream command; iterate the result for lists of chunks.

        The bridge stays borrowed until the stream is closed (use ``with``).
        Errors are raised from the iteration as in :meth:`execute`.
        """
        hard = self.config.hard_timeout(command, timeout)
        request = bridge_pb2.ExecuteRequest(
            command=command,
            args=encode_payload(args, limit=self._payload_limit),
            session_id=session_id or "",
            timeout=hard,
            request_id=request_id or "",
        )
        started = time.monotonic()
        trace = self.telemetry.trace_call(
            pool=self.name, command=command, kind="stream", session_id=session_id, request_id=request_id
        )
        try:
            loan = self.lend(session_id)
        except BaseException as exc:
            outcome = outcome_of(exc) if isinstance(exc, SnakepitError) else "error"
            trace.end(outcome, exc)
            if isinstance(exc, SnakepitError):
                self._finished(command, started, outcome, session_id, request_id)
            raise
        return BridgeStream(loan, request, hard=hard, started=started, trace=trace)

    # -- sessions --------------------------------------------------------------

    def end_session(self, session_id: str) -> bool:
        """End a session on its bridge and unbind it; False when the pool did not know it."""
        with self._lock:
            if session_id not in self._sessions:
                return False
        loan = self.lend(session_id)
        bridge = loan.bridge
        try:
            if session_id in bridge.sessions:
                bridge.end_session(session_id, self.config.startup_timeout)
        except grpc.RpcError as exc:
            raise rpc_failed(loan, exc, "EndSession", 0.0) from None
        except BaseException:
            loan.release(failed=True)
            raise
        else:
            loan.release()
        finally:
            with self._lock:
                self._sessions.pop(session_id, None)
                loan.slot.sessions.discard(session_id)
        return True

    def sessions(self) -> dict[str, int]:
        """Session id -> pid of the bridge it is pinned to (0 while that one restarts)."""
        with self._lock:
            return {sid: (slot.bridge.pid if slot.bridge else 0) for sid, slot in self._sessions.items()}

    # -- operations ------------------------------------------------------------

    def restart_bridge(self, pid: int | None = None) -> list[int]:
        """Replace one bridge (by pid) or all, each once its current call ends; the new pids.

        Raises:
            InfrastructureError: no bridge of this pool has that pid.
            BridgeStartError: a replacement did not come up within the start-up timeout.
        """
        with self._lock:
            targets = (
                self._slots if pid is None else [s for s in self._slots if s.bridge and s.bridge.pid == pid]
            )
            if not targets:
                pids = sorted(s.bridge.pid for s in self._slots if s.bridge)
                raise InfrastructureError(f"pool {self.name!r} has no bridge with pid {pid}; it has {pids}")
            marks: list[tuple[Slot, int]] = []
            for slot in targets:
                marks.append((slot, slot.gen if slot.state != "starting" else slot.gen - 1))
                if slot.state == "idle":
                    self._queue.discard_idle(slot)
                    self._replace_locked(slot, slot.bridge, "restart requested", kill=False)
                elif slot.state == "busy":
                    slot.recycle = True
            deadline = time.monotonic() + self.config.startup_timeout + self.config.shutdown_grace
            while not all(s.gen > g and s.bridge is not None for s, g in marks):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    raise BridgeStartError(f"pool {self.name!r}: restarted bridges did not come up in time")
                self._changed.wait(remaining)
            return [s.bridge.pid for s, _ in marks if s.bridge is not None]

    def stats(self) -> dict[str, Any]:
        """Counters and per-bridge figures (see the module docs of ``snakepit_celery``)."""
        with self._lock:
            rows = [(slot, slot.bridge) for slot in self._slots]
            busy = sum(1 for slot in self._slots if slot.state == "busy")
            stats: dict[str, Any] = {
                "name": self.name,
                "language": self.language,
                "size": self.config.size,
                "workers": sum(1 for _, b in rows if b is not None and not b.exited),
                "available": len(self._queue.idle),
                "busy": busy,
                "requests": self._requests,
                "queued": len(self._queue.waiters),
                "errors": self._errors,
                "queue_timeouts": self._queue.queue_timeouts,
                "pool_saturated": self._queue.pool_saturated,
                "restarts": self._restarts,
            }
            states = [(slot.state, len(slot.sessions)) for slot, _ in rows]
        stats["bridges"] = [
            {
                "pid": bridge.pid if bridge else None,
                "state": state,
                "requests": bridge.requests if bridge else 0,
                "rss_bytes": bridge.rss_bytes() if bridge else None,
                "sessions": sessions,
                "uptime": round(bridge.uptime(), 3) if bridge else 0.0,
            }
            for (_, bridge), (state, sessions) in zip(rows, states, strict=True)
        ]
        return stats

    def drain(self, timeout: float) -> bool:
        """Refuse new calls (``PoolClosed``) and wait for running and queued ones; True if all ended."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._draining = True
            self._queue.refuse(PoolClosed, f"pool {self.name!r} is draining")
            while any(s.state == "busy" for s in self._slots) or self._queue.waiters:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def __enter__(self) -> BridgePool:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

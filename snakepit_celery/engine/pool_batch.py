"""``BridgePool.execute_batch``: many calls of one command on one bridge, in one message.

A call through the pool costs about half a millisecond of gRPC round trip,
far more than a small command. ``ExecuteBatch`` pays it once for many items:
the bridge runs them one after another and answers with one outcome per
item. A batch is one borrowed bridge for its whole length.

Limits. The hard timeout of the call is the per-call hard limit (the
caller's, else ``command_timeouts``, else the pool's) times the number of
items it carries; past it the bridge is killed and replaced
(``CommandTimeout``), as for ``execute``. The items travel in as few
messages as the payload limit allows, and a bridge may answer fewer items
than it was sent (its response budget, see the proto): the rest go again in
a new call on the same bridge.

Errors. An item's failure is its own (``ItemResult(False, error)``, the
error mapped as ``execute`` maps it); a failure of the call as a whole
(no bridge borrowed, unknown command, crash, hard timeout) is raised when no
item has an outcome yet, and otherwise becomes the outcome of every item
left. A bridge answering UNIMPLEMENTED (written before this RPC) gets one
Execute per item instead, and is remembered as such.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
from snakepit_bridge._proto import bridge_pb2

from snakepit_celery.engine.failures import Attempts
from snakepit_celery.engine.loan import Loan, outcome_of
from snakepit_celery.engine.rpc import decode_payload, encode_payload, error_from_detail, map_rpc_error
from snakepit_celery.errors import CommandError, SnakepitError

if TYPE_CHECKING:
    from snakepit_celery.engine.bridge import Bridge
    from snakepit_celery.engine.pool import BridgePool

__all__ = ["ITEM_OVERHEAD", "ItemResult", "run_batch"]

#: Bytes of protobuf framing counted per item of a request.
ITEM_OVERHEAD = 16

#: Bridges that answered ExecuteBatch with UNIMPLEMENTED: they get one Execute per item.
_no_batch: weakref.WeakSet[Bridge] = weakref.WeakSet()


class ItemResult(NamedTuple):
    """The outcome of one item of a batch."""

    #: True when the item's command returned.
    ok: bool
    #: Its result, or the error (a :class:`~snakepit_celery.errors.SnakepitError`) it failed with.
    value: Any


class _BatchRun:
    """One ``execute_batch`` call: its items, their outcomes so far, and where it stands."""

    def __init__(
        self,
        pool: BridgePool,
        command: str,
        todo: list[tuple[int, bridge_pb2.Payload]],
        out: list[ItemResult | None],
        *,
        hard: float,
        session_id: str | None,
        request_id: str | None,
        stop_on_error: bool,
    ) -> None:
        self.pool = pool
        self.command = command
        self.todo = todo
        self.out = out
        self.hard = hard
        self.session_id = session_id
        self.request_id = request_id
        self.stop_on_error = stop_on_error
        #: Index into ``todo`` of the first item without an outcome.
        self.next = 0
        #: Hard timeout of the last call sent (for the error naming it).
        self.last_timeout = hard
        self.stopped = False
        # Outcomes recorded on the bridge now borrowed, and of those, failures (its stats).
        self.recorded = 0
        self.failed = 0
        self.trace = pool.telemetry.trace_call(
            pool=pool.name, command=command, kind="batch", session_id=session_id, request_id=request_id
        )

    # -- on one bridge ---------------------------------------------------------

    def on_bridge(self, bridge: Bridge) -> None:
        """Send what is left, a message at a time, until every item has an outcome (or it stops)."""
        while self.next < len(self.todo) and not self.stopped:
            group = self._group()
            if bridge in _no_batch:
                self._one_by_one(bridge, group)
                continue
            request = bridge_pb2.ExecuteBatchRequest(
                command=self.command,
                items=[payload for _, payload in group],
                session_id=self.session_id or "",
                timeout=self.hard,
                request_id=self.request_id or "",
                stop_on_error=self.stop_on_error,
            )
            self.last_timeout = self.hard * len(group)
            try:
                reply = bridge.batch_call(
                    request, timeout=self.last_timeout or None, metadata=self.trace.metadata
                )
            except grpc.RpcError as exc:
                if not (hasattr(exc, "code") and exc.code() == grpc.StatusCode.UNIMPLEMENTED):
                    raise
                _no_batch.add(bridge)  # a bridge of an older protocol revision
                continue
            if not reply.results:
                raise CommandError(f"the bridge answered a batch of {self.command!r} with no result", "")
            for item in reply.results:
                if item.ok:
                    self._record(ItemResult(True, decode_payload(item.result)))
                else:
                    self._record(ItemResult(False, error_from_detail(item.error)))

    def _group(self) -> list[tuple[int, bridge_pb2.Payload]]:
        """The next items that fit one request message (at least one)."""
        room = self.pool.config.max_payload_bytes
        end = self.next
        used = 0
        while end < len(self.todo):
            payload = self.todo[end][1]
            size = len(payload.json) + sum(len(blob) for blob in payload.blobs) + ITEM_OVERHEAD
            if end > self.next and used + size > room:
                break
            used += size
            end += 1
        return self.todo[self.next : end]

    def _one_by_one(self, bridge: Bridge, group: list[tuple[int, bridge_pb2.Payload]]) -> None:
        """The fallback for a bridge without ExecuteBatch: one Execute per item."""
        self.last_timeout = self.hard
        limit = self.pool.config.max_payload_bytes
        for _, payload in group:
            request = bridge_pb2.ExecuteRequest(
                command=self.command,
                args=payload,
                session_id=self.session_id or "",
                timeout=self.hard,
                request_id=self.request_id or "",
            )
            try:
                reply = bridge.execute_call(request, timeout=self.hard or None, metadata=self.trace.metadata)
            except grpc.RpcError as exc:
                mapped = map_rpc_error(exc, command=self.command, limit=limit)
                if mapped is None:
                    raise
                self._record(ItemResult(False, mapped))
            else:
                self._record(ItemResult(True, decode_payload(reply.result)))
            if self.stopped:
                return

    def _record(self, result: ItemResult) -> None:
        self.out[self.todo[self.next][0]] = result
        self.next += 1
        self.recorded += 1
        if not result.ok:
            self.failed += 1
            if self.stop_on_error:
                self.stopped = True

    def account(self, loan: Loan) -> None:
        """Count the items the borrowed bridge ran as its requests (and errors), in the pool's stats."""
        recorded, failed = self.recorded, self.failed
        self.recorded = self.failed = 0
        loan.count(recorded, failed)

    # -- the whole call --------------------------------------------------------

    def run(self, idempotent: bool) -> None:
        """Borrow a bridge and run the items on it, as ``execute`` runs one call.

        Raises:
            SnakepitError: the call failed as a whole before any item had an outcome.
        """
        pool = self.pool
        attempts = Attempts(idempotent=idempotent)
        while self.next < len(self.todo) and not self.stopped:
            loan = pool.lend(self.session_id)
            self.trace.checked_out(loan.pid)
            try:
                loan.ensure_session(self.session_id, self.hard or None)
                self.on_bridge(loan.bridge)
            except (grpc.RpcError, ValueError) as exc:
                self.account(loan)
                error = attempts.failed(loan, exc, self.command, self.last_timeout)
            except BaseException:
                self.account(loan)
                loan.release(failed=True)
                raise
            else:
                self.account(loan)
                loan.release(counted=False)
                return
            if error is None:
                continue
            if self.next == 0:
                raise error from None
            self._fail_rest(error)
            return

    def _fail_rest(self, error: SnakepitError) -> None:
        """The call failed after some items had their outcome: the rest fail with its error."""
        while self.next < len(self.todo) and not self.stopped:
            self.out[self.todo[self.next][0]] = ItemResult(False, error)
            self.next += 1
            self.stopped = self.stop_on_error


def run_batch(
    pool: BridgePool,
    command: str,
    items: Sequence[Any],
    *,
    timeout: float | None = None,
    session_id: str | None = None,
    request_id: str | None = None,
    stop_on_error: bool = False,
    idempotent: bool = False,
) -> list[ItemResult]:
    """Run ``command`` once per item on one borrowed bridge, in one ExecuteBatch call.

    This is ``BridgePool.execute_batch(command, items, ...)``.

    Args:
        command: the command name.
        items: the arguments of each call (JSON-able objects; bytes allowed).
        timeout: hard limit of one item; the call's is that times the items it carries.
        session_id, request_id, idempotent: as for ``execute`` (a crashed batch
            is run once more only when idempotent).
        stop_on_error: run nothing after the first failed item.

    Returns:
        One ``ItemResult(ok, value)`` per item in order: the result, or the error
        ``execute`` would raise for it; with ``stop_on_error`` the list ends at the
        first failed item.

    Raises:
        As ``execute``, for a failure of the call as a whole before any item had an outcome.

    Example::

        pool.execute_batch("compute", [{"operation": "sqrt", "a": x} for x in (4, 9)])
        # [ItemResult(ok=True, value={"result": 2, ...}), ItemResult(ok=True, value={"result": 3, ...})]
    """
    started = time.monotonic()
    limit = pool.config.max_payload_bytes
    out: list[ItemResult | None] = [None] * len(items)
    todo: list[tuple[int, bridge_pb2.Payload]] = []
    for index, item in enumerate(items):
        try:
            todo.append((index, encode_payload(item, limit=limit)))
        except SnakepitError as exc:  # not JSON-able, or too large: this item's own error
            out[index] = ItemResult(False, exc)
            if stop_on_error:
                break
    run = _BatchRun(
        pool,
        command,
        todo,
        out,
        hard=pool.config.hard_timeout(command, timeout),
        session_id=session_id,
        request_id=request_id,
        stop_on_error=stop_on_error,
    )
    raised: SnakepitError | None = None
    try:
        if todo:
            run.run(idempotent)
    except SnakepitError as exc:
        raised = exc
        raise
    finally:
        run.trace.end(*_trace_outcome(out, raised))
        elapsed = time.monotonic() - started
        _report(pool, command, out, raised, len(todo), elapsed, session_id, request_id)
    results: list[ItemResult] = []
    for result in out:
        if result is None:
            break  # not run: the batch stopped at an earlier failure
        results.append(result)
        if stop_on_error and not result.ok:
            break
    return results


def _trace_outcome(
    out: list[ItemResult | None], raised: SnakepitError | None
) -> tuple[str, BaseException | None]:
    """The batch's outcome for its trace: the call's error, else its first failed item's."""
    failed = raised or next((r.value for r in out if r is not None and not r.ok), None)
    return ("ok", None) if failed is None else (outcome_of(failed), failed)


def _report(
    pool: BridgePool,
    command: str,
    out: list[ItemResult | None],
    raised: SnakepitError | None,
    sent: int,
    elapsed: float,
    session_id: str | None,
    request_id: str | None,
) -> None:
    """One ``request_finished`` per item that has an outcome (each its share of the time).

    When the call failed as a whole (``raised``), none of the ``sent`` items has one: each
    is reported with the call's outcome.
    """
    outcomes = ["ok" if r.ok else outcome_of(r.value) for r in out if r is not None]
    if raised is not None:
        outcomes += [outcome_of(raised)] * sent
    share = elapsed / max(1, len(outcomes))
    for outcome in outcomes:
        pool.telemetry.request_finished(
            pool=pool.name,
            command=command,
            duration=share,
            outcome=outcome,
            session_id=session_id,
            request_id=request_id,
        )

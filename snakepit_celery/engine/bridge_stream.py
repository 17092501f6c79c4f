"""A stream call on a borrowed bridge: an iterator of chunk lists, a context manager.

Each gRPC message of ``ExecuteStream`` may carry several chunks the bridge
coalesced; they are handed out together, as one list, so a consumer sees the
same grouping the bridge sent. The bridge stays borrowed until the stream
ends or is closed.

Closing an unfinished stream cancels the gRPC call, and that is over at once
for the caller; but the bridge's generator stops only at its next look at the
cancel, and one stuck in a long step between yields would go on running
beside the next caller's call, which the threads pool cannot stop. So the
loan stays open while a settle thread (:meth:`~snakepit_celery.engine.loan.Loan.settle`)
asks the bridge (Describe's ``active_calls``, every few milliseconds) until
nothing runs there any more, and only then gives it back; a bridge still busy after ``cancel_grace`` is
killed and replaced. The caller never waits for any of it.
"""

from __future__ import annotations

from typing import Any

import grpc
from snakepit_bridge._proto import bridge_pb2

from snakepit_celery.engine.failures import rpc_failed
from snakepit_celery.engine.loan import Loan, outcome_of
from snakepit_celery.engine.rpc import decode_payload
from snakepit_celery.engine.telemetry import NO_TRACE, CallTrace

__all__ = ["BridgeStream"]


class BridgeStream:
    """Iterate for lists of decoded chunks; ``cancel()`` or leave the ``with`` block to stop."""

    def __init__(
        self,
        loan: Loan,
        request: bridge_pb2.ExecuteRequest,
        *,
        hard: float,
        started: float,
        trace: CallTrace = NO_TRACE,
    ) -> None:
        self._loan = loan
        bridge = loan.bridge
        self.command = request.command
        self._session_id = request.session_id or None
        self._request_id = request.request_id or None
        self._hard = hard
        self._started = started
        self._done = False
        self._cancelled = False
        #: Chunks delivered so far.
        self.chunks = 0
        self._call: Any = None
        self._trace = trace
        trace.checked_out(bridge.pid)
        try:
            loan.ensure_session(self._session_id, hard or None)
            self._call = bridge.open_stream(request, timeout=hard or None, metadata=trace.metadata)
        except grpc.RpcError as exc:
            self._fail(exc)
        except BaseException as exc:
            self._finish("error", release=True, failed=True, error=exc)
            raise

    def _fail(self, exc: grpc.RpcError) -> None:
        error = rpc_failed(self._loan, exc, self.command, self._hard, cancelled=self._cancelled)
        self._finish(outcome_of(error), release=False, error=error)
        raise error from None

    def _finish(
        self, outcome: str, *, release: bool, failed: bool = False, error: BaseException | None = None
    ) -> None:
        if self._done:
            return
        self._done = True
        self._trace.end(outcome, error)
        if release:
            self._loan.release(failed=failed)
        loan = self._loan
        loan.telemetry.stream_chunks(pool=loan.pool_name, command=self.command, count=self.chunks)
        loan.finished(self.command, self._started, outcome, self._session_id, self._request_id)

    def __iter__(self) -> BridgeStream:
        return self

    def __next__(self) -> list[Any]:
        if self._done:
            raise StopIteration
        try:
            message = next(self._call)
        except StopIteration:
            self._finish("ok", release=True)
            raise
        except grpc.RpcError as exc:
            self._fail(exc)
            raise  # unreachable: _fail raises
        chunks = [decode_payload(chunk, what="stream chunk") for chunk in message.chunks]
        self.chunks += len(chunks)
        self._trace.chunks(len(chunks))
        return chunks

    def cancel(self) -> None:
        """Cancel the stream on the bridge; a following iteration raises CommandCancelled."""
        self._cancelled = True
        if self._call is not None and not self._done:
            self._call.cancel()

    def close(self) -> None:
        """End the stream, cancelling it if unfinished; returns at once.

        The bridge goes back to the pool once its command has really stopped
        (see the module docs).
        """
        if self._done:
            return
        self.cancel()
        self._finish("cancelled", release=False)
        self._loan.settle(self.command)

    def __enter__(self) -> BridgeStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""A stream call on a borrowed bridge: an iterator of chunk lists, a context manager.

Each gRPC message of ``ExecuteStream`` may carry several chunks the bridge
coalesced; they are handed out together, as one list, so a consumer sees the
same grouping the bridge sent. The bridge stays borrowed until the stream
ends or is closed.

Closing an unfinished stream cancels the gRPC call, and that is over at once
for the caller; but the bridge's generator stops only at its next look at the
cancel, and one stuck in a long step between yields would go on running
beside the next caller's call, which the threads pool cannot stop. So the
slot stays borrowed while a settle thread asks the bridge (Describe's
``active_calls``, every few milliseconds) until nothing runs there any more,
and only then gives it back; a bridge still busy after ``cancel_grace`` is
killed and replaced. The caller never waits for any of it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import grpc
from snakepit_bridge._proto import bridge_pb2

from snakepit_celery.engine.rpc import decode_payload
from snakepit_celery.engine.telemetry import NO_TRACE, CallTrace

if TYPE_CHECKING:
    from snakepit_celery.engine.bridge import Bridge
    from snakepit_celery.engine.checkout import Slot
    from snakepit_celery.engine.pool import BridgePool

__all__ = ["BridgeStream", "settle_cancelled"]

log = logging.getLogger("snakepit_celery.pool")

#: Seconds between looks at a cancelled stream's bridge.
SETTLE_POLL = 0.015
#: Longest wait for one Describe answer; a bridge whose only thread is busy
#: (Node.js in a synchronous loop) answers none until the grace ends.
_DESCRIBE_TIMEOUT = 0.5


def settle_cancelled(pool: BridgePool, slot: Slot, bridge: Bridge, command: str) -> None:
    """Give ``slot`` back once the cancelled ``command`` has ended on ``bridge``; never blocks.

    Until then the slot stays busy (``drain`` waits for it, a session pinned
    to it queues). Past ``cancel_grace`` the bridge is killed and replaced
    (a restart; its exit reason starts with "ignored cancel").
    """
    with pool._lock:
        closed = pool._closed
        if not closed:
            pool._spawn_thread(
                f"snakepit-settle-{pool.name}-{slot.index}", lambda: _settle(pool, slot, bridge, command)
            )
    if closed:
        pool._release(slot, bridge)


def _settle(pool: BridgePool, slot: Slot, bridge: Bridge, command: str) -> None:
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
                pool._release(slot, bridge, broken=reason)
                return
            pool._closing.wait(SETTLE_POLL)
    except BaseException:  # a bug here must not keep the slot borrowed forever
        log.exception("pool %s: settling a cancelled %r failed", pool.name, command)
    # Given back; a bridge that exited meanwhile is replaced by the release.
    pool._release(slot, bridge)


class BridgeStream:
    """Iterate for lists of decoded chunks; ``cancel()`` or leave the ``with`` block to stop."""

    def __init__(
        self,
        pool: BridgePool,
        slot: Slot,
        request: bridge_pb2.ExecuteRequest,
        *,
        hard: float,
        started: float,
        trace: CallTrace = NO_TRACE,
    ) -> None:
        self._pool = pool
        self._slot = slot
        bridge: Bridge = slot.bridge  # type: ignore[assignment]
        self._bridge = bridge
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
            if self._session_id is not None and self._session_id not in bridge.sessions:
                pool._init_session(bridge, self._session_id, hard or None)
            self._call = bridge.open_stream(request, timeout=hard or None, metadata=trace.metadata)
        except grpc.RpcError as exc:
            self._fail(exc)
        except BaseException as exc:
            self._finish("error", release=True, failed=True, error=exc)
            raise

    def _fail(self, exc: grpc.RpcError) -> None:
        from snakepit_celery.engine.failures import rpc_failed
        from snakepit_celery.engine.pool import _OUTCOME

        error = rpc_failed(
            self._pool, self._slot, self._bridge, exc, self.command, self._hard, cancelled=self._cancelled
        )

        self._finish(_OUTCOME.get(type(error), "error"), release=False, error=error)
        raise error from None

    def _finish(
        self, outcome: str, *, release: bool, failed: bool = False, error: BaseException | None = None
    ) -> None:
        if self._done:
            return
        self._done = True
        self._trace.end(outcome, error)
        if release:
            self._pool._release(self._slot, self._bridge, failed=failed)
        self._pool.telemetry.stream_chunks(pool=self._pool.name, command=self.command, count=self.chunks)
        self._pool._finished(self.command, self._started, outcome, self._session_id, self._request_id)

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
        settle_cancelled(self._pool, self._slot, self._bridge, self.command)

    def __enter__(self) -> BridgeStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""A stream call on a borrowed bridge: an iterator of chunk lists, a context manager.

Each gRPC message of ``ExecuteStream`` may carry several chunks the bridge
coalesced; they are handed out together, as one list, so a consumer sees the
same grouping the bridge sent. The bridge stays borrowed until the stream
ends or is closed; closing an unfinished stream cancels it on the bridge
(its generator stops) and gives the bridge back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
from snakepit_bridge._proto import bridge_pb2

from snakepit_celery.rpc import decode_payload

if TYPE_CHECKING:
    from snakepit_celery.bridge import Bridge
    from snakepit_celery.checkout import Slot
    from snakepit_celery.pool import BridgePool

__all__ = ["BridgeStream"]


class BridgeStream:
    """Iterate for lists of decoded chunks; ``cancel()`` or leave the ``with`` block to stop."""

    def __init__(
        self, pool: BridgePool, slot: Slot, request: bridge_pb2.ExecuteRequest, *, hard: float, started: float
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
        try:
            if self._session_id is not None and self._session_id not in bridge.sessions:
                pool._init_session(bridge, self._session_id, hard or None)
            self._call = bridge.open_stream(request, timeout=hard or None)
        except grpc.RpcError as exc:
            self._fail(exc)
        except BaseException:
            self._finish("error", release=True, failed=True)
            raise

    def _fail(self, exc: grpc.RpcError) -> None:
        error = self._pool._rpc_failed(
            self._slot, self._bridge, exc, self.command, self._hard, cancelled=self._cancelled
        )
        from snakepit_celery.pool import _OUTCOME

        self._finish(_OUTCOME.get(type(error), "error"), release=False)
        raise error from None

    def _finish(self, outcome: str, *, release: bool, failed: bool = False) -> None:
        if self._done:
            return
        self._done = True
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
        return chunks

    def cancel(self) -> None:
        """Cancel the stream on the bridge; a following iteration raises CommandCancelled."""
        self._cancelled = True
        if self._call is not None and not self._done:
            self._call.cancel()

    def close(self) -> None:
        """End the stream (cancelling it if unfinished) and give the bridge back."""
        if self._done:
            return
        self.cancel()
        self._finish("cancelled", release=True)

    def __enter__(self) -> BridgeStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

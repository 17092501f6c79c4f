"""Run batches through a pool in slices, as many slices in flight as it has bridges.

A slice is a run of consecutive items sent to one bridge in one
``ExecuteBatch`` call (:meth:`BridgePool.execute_batch`): the gRPC round trip,
which costs more than a small command, is paid once per slice instead of once
per item. Slices are small enough (:func:`slice_size`) that every bridge gets
several of a batch and progress moves often, and large enough to amortise the
call.

Every batch running in a worker process feeds the same few threads per pool
(one per bridge), instead of each batch task starting threads of its own:
with several chunks running at once (a worker's concurrency is usually above
its bridge count), per-task threads would put many times more callers than
bridges on the pool's checkout queue, and the extra threads only fight over
the GIL. The threads take batches first come, first served, and slices within
a batch in input order; an idle thread ends after :data:`IDLE_EXIT` seconds
and a new one starts when work comes.

Errors keep their per-item meaning: without ``return_exceptions`` a slice
stops at its first failed item (the bridge runs nothing after it) and the
batch claims no further slice, so the failed item with the lowest index is
the one reported; a failure of a slice's call as a whole (a crashed bridge,
its hard timeout) is the error of its first item, or with
``return_exceptions`` of every item of the slice.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from snakepit_celery.batch.items import Batch
from snakepit_celery.errors import InfrastructureError, PoolClosed
from snakepit_celery.observability import tracing

if TYPE_CHECKING:
    from snakepit_celery.engine.pool import BridgePool

__all__ = ["IDLE_EXIT", "MAX_SLICE", "SLICES_PER_BRIDGE", "BatchCall", "runner_for", "slice_size"]

log = logging.getLogger(__name__)

#: Seconds a runner thread waits for work before it ends.
IDLE_EXIT = 10.0
#: Items of one slice, at most (progress and a cancel move at least this often).
MAX_SLICE = 256
#: Slices per bridge a batch is cut into, at least (while slices stay under ``MAX_SLICE``).
SLICES_PER_BRIDGE = 4


def slice_size(items: int, bridges: int) -> int:
    """Items per slice of a batch of ``items`` on a pool of ``bridges``."""
    return max(1, min(MAX_SLICE, math.ceil(items / (max(1, bridges) * SLICES_PER_BRIDGE))))


class BatchCall:
    """A batch and how to call each of its items on the pool."""

    def __init__(
        self,
        batch: Batch,
        command: str,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        request_id: str | None = None,
        idempotent: bool = False,
    ) -> None:
        self.batch = batch
        self.command = command
        self.timeout = timeout
        self.session_id = session_id
        self.request_id = request_id
        self.idempotent = idempotent
        #: The sender's tracing context: the slices run on the pool's batch threads.
        self.traced = tracing.capture()

    def run_one(self, pool: BridgePool) -> bool:
        """Run the batch's next slice; False when it has no item left to claim.

        Raises:
            Exception: only on a fault of this code; the slice's items that had no
                outcome yet are handed back first, so the batch can still end.
        """
        batch = self.batch
        claimed = batch.claim_slice(slice_size(len(batch.items), pool.config.size))
        if claimed is None:
            return False
        settled = 0  # items of the slice that have their outcome
        try:
            stop_on_error = not batch.return_exceptions
            try:
                with tracing.attached(self.traced):
                    results = pool.execute_batch(
                        self.command,
                        batch.items[claimed.start : claimed.stop],
                        timeout=self.timeout,
                        session_id=self.session_id,
                        request_id=self.request_id,
                        stop_on_error=stop_on_error,
                        idempotent=self.idempotent,
                    )
            except Exception as exc:  # the slice's call failed as a whole: its items' error
                for index in claimed[:1] if stop_on_error else claimed:
                    batch.finish(index, exc=exc)
                    settled += 1
                return True
            for index, result in zip(claimed, results, strict=False):
                if result.ok:
                    batch.finish(index, result.value)
                else:
                    batch.finish(index, exc=result.value)
                settled += 1
            return True
        finally:
            # The rest never ran (the slice stopped at a failure), or a fault cut this short.
            batch.unclaim(len(claimed) - settled)


class PoolRunner:
    """The batch threads of one pool (one per bridge)."""

    def __init__(self, pool: BridgePool) -> None:
        # NOTE: a weak reference, so the runners' table does not keep a closed pool alive.
        self._pool = weakref.ref(pool)
        self.name = pool.name
        self.size = pool.config.size
        self._calls: deque[BatchCall] = deque()
        self._cond = threading.Condition()
        self._threads = 0

    def submit(self, call: BatchCall) -> None:
        """Queue a batch; its ``finished`` event is set when it is done."""
        if call.batch.finished.is_set():
            return
        with self._cond:
            self._calls.append(call)
            self._add_threads()
            self._cond.notify_all()

    def _add_threads(self) -> None:
        """Start threads up to one per bridge, and no more than there are items queued. Lock held."""
        wanted = min(self.size, sum(len(c.batch.items) for c in self._calls))
        while self._threads < wanted:
            self._threads += 1
            threading.Thread(target=self._loop, name=f"snakepit-batch-{self.name}", daemon=True).start()

    def _loop(self) -> None:
        """Thread body: run slices of the oldest batch until none is left for a while.

        On a fault of this code the batch at hand is stopped with an error that
        names it (its task fails instead of waiting forever), taken off the queue,
        and the thread is replaced if batches are left; ``_threads`` stays exact.
        """
        call: BatchCall | None = None
        counted = True  # this thread is in ``_threads``
        try:
            pool = self._pool()
            while True:
                with self._cond:
                    call = None
                    while not self._calls:
                        if not self._cond.wait(IDLE_EXIT) and not self._calls:
                            # NOTE: under the lock that tells it no work is left, so a
                            # submit made after it starts a thread of its own.
                            self._threads -= 1
                            counted = False
                            return
                    call = self._calls[0]
                if pool is None:
                    call.batch.stop(PoolClosed(f"pool {self.name!r} is closed"))
                if pool is None or not call.run_one(pool):
                    with self._cond:
                        if self._calls and self._calls[0] is call:
                            self._calls.popleft()
        except BaseException as exc:  # NOTE: logged, not raised: nothing above a thread's body
            log.error("pool %s: a batch runner thread failed", self.name, exc_info=exc)
            if call is not None:
                error = InfrastructureError(
                    f"pool {self.name!r}: the batch runner failed: {type(exc).__name__}: {exc}"
                )
                error.__cause__ = exc
                call.batch.stop(error)
                with self._cond:
                    if call in self._calls:
                        self._calls.remove(call)
        finally:
            if counted:
                with self._cond:
                    self._threads -= 1
                    self._add_threads()


_runners: weakref.WeakKeyDictionary[Any, PoolRunner] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def runner_for(pool: BridgePool) -> PoolRunner:
    """The runner of ``pool`` in this process (made on first use)."""
    with _lock:
        runner = _runners.get(pool)
        if runner is None:
            runner = _runners[pool] = PoolRunner(pool)
        return runner

"""The supervisor thread of a pool: learns of every process exit at once.

It sleeps in ``poll()`` on the pidfds of the pool's processes (and a wake-up
pipe), so a death is noticed the moment it happens and nothing polls on a
timer. It also carries out SIGKILL escalations: a bridge asked to stop with
SIGTERM is killed when its grace period ends, without a thread per bridge.
Callbacks run on this thread and must be quick.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import select
import threading
import time
from collections.abc import Callable

from snakepit_celery.engine.process import ProcessHandle

__all__ = ["Supervisor"]

log = logging.getLogger("snakepit_celery.supervisor")  # its name before the engine/ folder


class Supervisor:
    """Watches processes through their pidfds and calls back when one exits."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._wake_r, select.POLLIN)
        self._watched: dict[int, tuple[ProcessHandle, Callable[[], None]]] = {}
        self._adds: list[tuple[ProcessHandle, Callable[[], None]]] = []
        self._escalations: list[tuple[float, int, ProcessHandle]] = []
        self._seq = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"snakepit-supervisor-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, handle: ProcessHandle, on_exit: Callable[[], None]) -> None:
        """Call ``on_exit()`` on the supervisor thread once ``handle`` has exited.

        The handle's pidfd is closed after the callback.
        """
        with self._lock:
            self._adds.append((handle, on_exit))
        self._wake()

    def escalate(self, handle: ProcessHandle, after: float) -> None:
        """SIGKILL ``handle`` ``after`` seconds from now unless it has exited by then."""
        with self._lock:
            self._seq += 1
            heapq.heappush(self._escalations, (time.monotonic() + after, self._seq, handle))
        self._wake()

    def stop(self) -> None:
        """End the thread (after the callbacks already due) and release its pipe."""
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(5.0)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _wake(self) -> None:
        # A full pipe already means "wake up"; a closed one means stopped.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _exited(self, handle: ProcessHandle, on_exit: Callable[[], None]) -> None:
        try:
            on_exit()
        except Exception:  # a callback bug must not kill the supervisor
            log.exception("supervisor %s: exit callback for pid %s failed", self.name, handle.pid)
        finally:
            handle.close()

    def _run(self) -> None:
        while True:
            with self._lock:
                adds, self._adds = self._adds, []
                now = time.monotonic()
                due: list[ProcessHandle] = []
                while self._escalations and self._escalations[0][0] <= now:
                    due.append(heapq.heappop(self._escalations)[2])
                timeout = (self._escalations[0][0] - now) * 1000.0 if self._escalations else None
            for handle in due:
                if handle.kill():
                    log.warning("supervisor %s: pid %s ignored SIGTERM; sent SIGKILL", self.name, handle.pid)
            gone: list[tuple[ProcessHandle, Callable[[], None]]] = []
            for handle, on_exit in adds:
                if handle.pidfd < 0:
                    gone.append((handle, on_exit))
                else:
                    self._watched[handle.pidfd] = (handle, on_exit)
                    self._poll.register(handle.pidfd, select.POLLIN)
            for handle, on_exit in gone:
                self._exited(handle, on_exit)
            if self._stopping:
                return
            for fd, _ in self._poll.poll(timeout):
                if fd == self._wake_r:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    continue
                entry = self._watched.pop(fd, None)
                if entry is None:
                    continue
                self._poll.unregister(fd)
                self._exited(*entry)

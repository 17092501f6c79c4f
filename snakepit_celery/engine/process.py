"""Handles on bridge processes: signals and exit notice through a pidfd.

A pidfd names one process for good: a signal sent through it can never hit
another process that got the same pid later, and it becomes readable the
moment the process exits, so the supervisor learns of a death without
polling. A spawned bridge is our child and we reap it; a preloaded bridge is
the zygote's child, which reaps it and tells us its status.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import subprocess
import threading

__all__ = ["ForkedProcess", "ProcessHandle", "SpawnedProcess", "describe_status"]


def describe_status(status: int | None) -> str:
    """``returncode``-style status as words: "exit code 1", "signal SIGKILL"."""
    if status is None:
        return "exited"
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"exit code {status}"


class ProcessHandle:
    """One process, addressed through its pidfd."""

    def __init__(self, pid: int) -> None:
        #: The process id (for logs, stats and the sweep record).
        self.pid = pid
        self._lock = threading.Lock()
        self._closed = False
        #: Exit status once known, ``returncode`` style (negative: signal).
        self.returncode: int | None = None
        try:
            self.pidfd: int = os.pidfd_open(pid)
        except ProcessLookupError:
            # Gone (and reaped) before we looked: an exited process.
            self.pidfd = -1
        # One poll object for the life of the pidfd: the checkout path asks on every call.
        self._poller = select.poll()
        if self.pidfd >= 0:
            self._poller.register(self.pidfd, select.POLLIN)

    def send_signal(self, sig: int) -> bool:
        """Signal the process; False when it is already gone (ESRCH is not an error)."""
        with self._lock:
            if self._closed or self.pidfd < 0:
                return False
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                return False
            except OSError as exc:  # pragma: no cover - only EBADF-like races
                if exc.errno in (errno.ESRCH, errno.EBADF):
                    return False
                raise
            return True

    def kill(self) -> bool:
        return self.send_signal(signal.SIGKILL)

    def terminate(self) -> bool:
        return self.send_signal(signal.SIGTERM)

    def has_exited(self, timeout: float = 0.0) -> bool:
        """True once the process has exited; waits up to ``timeout`` seconds."""
        with self._lock:
            if self._closed or self.pidfd < 0:
                return True
            return bool(self._poller.poll(timeout * 1000.0))

    def exited_now(self) -> bool:
        """True if the process is seen to have exited; one ``poll(2)``, never waits.

        Made for the pool's checkout path: it never blocks on the handle's
        lock either, and a handle busy elsewhere (a waiting :meth:`has_exited`,
        or :meth:`close`) counts as running; the caller then learns of the
        death from the call itself.
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._closed or self.pidfd < 0:
                return True
            # NOTE: readable from the moment the process exits, zombie or not.
            return bool(self._poller.poll(0))
        finally:
            self._lock.release()

    def reap(self) -> int | None:
        """Collect the exit status of an exited process (subclasses)."""
        return self.returncode

    def close(self) -> None:
        """Release the pidfd; signals are no-ops afterwards."""
        with self._lock:
            if not self._closed and self.pidfd >= 0:
                os.close(self.pidfd)
            self._closed = True


class SpawnedProcess(ProcessHandle):
    """A bridge we started with ``subprocess.Popen``; we reap it."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        super().__init__(popen.pid)

    def reap(self) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.returncode = self.popen.wait(timeout=1.0)
        return self.returncode


class ForkedProcess(ProcessHandle):
    """A bridge forked by the zygote; the zygote reaps it and reports the status."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self._status_known = threading.Event()

    def set_status(self, returncode: int) -> None:
        """Called when the zygote reports the exit."""
        self.returncode = returncode
        self._status_known.set()

    def reap(self) -> int | None:
        # The zygote's report follows the exit within milliseconds (None if the zygote is gone).
        self._status_known.wait(0.1)
        return self.returncode

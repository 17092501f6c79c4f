"""Notice when the process that owns this bridge dies, so the bridge never outlives it.

PR_SET_PDEATHSIG alone is not enough: it fires when the parent *thread* that
forked us exits (the pool spawns bridges from worker threads), and it is lost
across a zygote fork. Instead a thread waits on a pidfd of the owner
(``pidfd_open`` + ``poll``: woken the instant it exits, no PID-reuse race);
where pidfds are missing it polls ``kill(pid, 0)`` and ``getppid()``.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable

__all__ = ["POLL_INTERVAL", "watch_parent"]

log = logging.getLogger(__name__)

#: Seconds between checks when no pidfd is available.
POLL_INTERVAL = 0.2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_pidfd(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        while not poller.poll():
            pass
    finally:
        os.close(fd)


def _wait_polling(pid: int) -> None:
    original_ppid = os.getppid()
    stop = threading.Event()
    while not stop.wait(POLL_INTERVAL):
        if not _alive(pid):
            return
        # If the owner was our parent, reparenting means it died (even if its
        # pid was reused since).
        if original_ppid == pid and os.getppid() != pid:
            return


def watch_parent(pid: int, on_death: Callable[[], None]) -> threading.Thread | None:
    """Call ``on_death()`` (from a daemon thread) when process ``pid`` exits.

    If ``pid`` is already gone, ``on_death`` runs at once and None is returned.
    """
    try:
        fd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        log.warning("parent process %d is already gone; stopping", pid)
        on_death()
        return None
    except (AttributeError, OSError):
        fd = None
    if fd is None and not _alive(pid):
        on_death()
        return None

    def run() -> None:
        if fd is not None:
            _wait_pidfd(fd)
        else:
            _wait_polling(pid)
        log.warning("parent process %d exited; stopping", pid)
        on_death()

    thread = threading.Thread(target=run, name="snakepit-parent-watch", daemon=True)
    thread.start()
    return thread

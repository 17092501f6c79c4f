"""Process bookkeeping every test folder shares: the run mark and the orphan check.

Test modules import this by name (``from testprocs import ...``), never
``from conftest import ...``: several folders have a ``conftest.py``, and which
one a bare ``import conftest`` finds depends on the order pytest loaded them.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable

import psutil
import pytest

__all__ = ["IN_CI", "LONG_LIVED", "RUN_MARK", "assert_no_orphans", "marked_processes", "missing_service"]

#: Every process started by this test run inherits this mark in its environment,
#: so a process that outlived its test is found even after init adopted it.
RUN_MARK = "SNAKEPIT_TEST_RUN"
os.environ.setdefault(RUN_MARK, uuid.uuid4().hex)
#: Pids of processes that live for the whole run on purpose (the test Redis).
LONG_LIVED: set[int] = set()

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_service(reason: str) -> None:
    """Skip the test locally; fail it in CI, which must never go green by skipping."""
    if IN_CI:
        pytest.fail(f"CI=true and a service is missing: {reason}")
    pytest.skip(reason)


def marked_processes(skip: Callable[[psutil.Process], bool] | None = None) -> list[psutil.Process]:
    """Live processes started by this test run, other than pytest, the long-lived ones
    and those ``skip`` says belong to something that is checked elsewhere."""
    mark = os.environ[RUN_MARK]
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == me or proc.pid in LONG_LIVED:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(RUN_MARK) == mark and not (skip and skip(proc)):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def assert_no_orphans(skip: Callable[[psutil.Process], bool] | None = None, timeout: float = 10.0) -> None:
    """Fail (after killing them) if processes of this run are still alive ``timeout`` s from now."""
    deadline = time.monotonic() + timeout
    left = marked_processes(skip)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = marked_processes(skip)
    if left:
        described = []
        for proc in left:
            try:
                described.append(f"{proc.pid}: {' '.join(proc.cmdline())[:200]}")
                proc.kill()
            except psutil.Error:
                continue
        pytest.fail("processes outlived the test: " + "; ".join(described))

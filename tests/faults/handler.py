"""The fault suite's bridge handler: the test handler, whose ``sleep`` keeps a run log.

Bridges load it with ``handler = "tests.faults.handler:FaultHandler"`` and the
repository root on PYTHONPATH. A ``sleep`` call given a ``token`` and a ``log``
appends ``S <token> <pid>`` to the log when it starts and ``E <token> <pid>``
when it ends: the log counts every execution of every call (a call that ran
twice has two ``S`` lines), says on which bridge it ran, and, read in order,
whether two calls ever overlapped. Each line is one small ``O_APPEND`` write,
so bridges of several workers can share one log file.
"""

from __future__ import annotations

import os
from typing import Any

from snakepit_bridge import command

from tests.handlers import TestHandler


def _append(log: str, line: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


class FaultHandler(TestHandler):
    """The test handler with a ``sleep`` that records its runs."""

    __test__ = False  # not a pytest test class

    @command
    def sleep(self, seconds: float = 0.1, token: str = "", log: str = "") -> dict[str, Any]:  # type: ignore[override]
        """Sleep ``seconds`` like the showcase's ``sleep``; log its start and end under ``token``."""
        if log:
            _append(log, f"S {token} {os.getpid()}")
        result = super().sleep(seconds)
        if log:
            _append(log, f"E {token} {os.getpid()}")
        return {**result, "pid": os.getpid(), "token": token}

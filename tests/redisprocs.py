"""A ``redis-server`` of a test's own with the options it needs (a password, TLS).

:class:`~snakepit_celery.embedded.EmbeddedRedis` is the plain server every test
shares; this one takes extra ``redis-server`` arguments, and waits until a
client with the given connection options (the password, the CA) gets PONG.
Tests import it by name (``from redisprocs import RedisProcess``).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["RedisProcess", "free_port"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """``redis-server`` on 127.0.0.1 with ``args`` added; ``client_options`` are what a
    redis-py client needs to reach it (``password``, ``ssl_ca_certs``, ...)."""

    def __init__(self, *args: str, tls: bool = False, **client_options: Any) -> None:
        executable = shutil.which("redis-server")
        assert executable, "redis-server is not on PATH"
        self.executable = executable
        self.args = args
        self.tls = tls
        self.client_options = client_options
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="snakepit-test-redis-")

    @property
    def log(self) -> str:
        path = Path(self._dir.name) / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> RedisProcess:
        import redis

        self.port = free_port()
        ports = ["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)]
        argv = [
            self.executable, *ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", self._dir.name, "--logfile", str(Path(self._dir.name) / "redis.log"), *self.args,
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, ssl=self.tls, **self.client_options)
        deadline = time.monotonic() + 15
        try:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"redis-server {argv} exited: {self.log[-2000:]}")
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(OSError):
            self._dir.cleanup()

    def __enter__(self) -> RedisProcess:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

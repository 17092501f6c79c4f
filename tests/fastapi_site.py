"""examples/fastapi_app started the way its docstring says, for the tests that use it.

``celery -A app:celery_app worker`` and ``uvicorn app:app``, both in
``examples/fastapi_app``, on this run's private Redis; :func:`fastapi_site`
yields the site's URL and stops both (uvicorn first, so its lifespan closes
the loop's Redis clients while Redis is up).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery

from snakepit_celery.integration.workerproc import WorkerProcess

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fastapi_app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Site:
    """A running example site."""

    url: str
    #: The worker's and uvicorn's pids (a module-scoped site's trees are no orphans).
    pids: list[int]


@contextmanager
def fastapi_site(redis_url: str, *, pool_size: int = 1) -> Iterator[Site]:
    """The example's worker and uvicorn server."""
    prefix = f"fastapi{uuid.uuid4().hex[:6]}"
    env = {
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "SNAKEPIT_POOL_SIZE": str(pool_size),
        "SNAKEPIT_QUEUE_PREFIX": prefix,
    }
    hostname = f"{prefix}@{socket.gethostname()}"
    worker_argv = ["-A", "app:celery_app", "worker", "-n", hostname, "--loglevel", "WARNING"]
    port = free_port()
    web_argv = [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port), "--no-access-log"]
    web_argv += ["--timeout-graceful-shutdown", "5"]
    caller = Celery(broker=redis_url, set_as_current=False)
    worker_argv += ["--without-mingle", "--without-gossip"]
    with (
        WorkerProcess(worker_argv, env=env, cwd=str(EXAMPLE)) as worker,
        tempfile.TemporaryFile(mode="w+") as log,
    ):
        worker.wait_ready(caller, hostname)
        web = subprocess.Popen(
            web_argv,
            cwd=str(EXAMPLE),
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                assert web.poll() is None, f"uvicorn exited: {_tail(log)}"
                assert time.monotonic() < deadline, "uvicorn did not answer"
                try:
                    with urllib.request.urlopen(url + "/progress", timeout=1) as response:
                        if response.status == 200:
                            break
                except OSError:
                    time.sleep(0.05)
            yield Site(url, [worker.pid, web.pid])
        finally:
            web.terminate()
            try:
                web.wait(15)
            except subprocess.TimeoutExpired:
                web.kill()
                web.wait(5)
            caller.close()


def _tail(log: Any) -> str:
    log.seek(0)
    return str(log.read()[-3000:])


def request(url: str, body: Any = None, *, method: str | None = None, timeout: float = 30) -> tuple[int, Any]:
    """``(status, decoded JSON)`` of one request (a JSON ``body`` makes it a POST)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())

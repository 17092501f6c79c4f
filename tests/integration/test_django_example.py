"""examples/django_project: Django's own server and the project's own Celery worker, both real.

The web process runs ``manage.py runserver`` and the worker ``celery -A djproject
worker``, each in the example's directory with nothing but environment variables
pointing them at the test run's Redis, the way a user starts them.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from snakepit_celery.integration.workerproc import WorkerFailed, WorkerProcess
from snakepit_celery.observability.stats import get_stats

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_project"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _request(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait_http(server: WorkerProcess, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise WorkerFailed(f"runserver exited:\n{server.log()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.05)
    raise WorkerFailed(f"runserver did not answer within {timeout}s:\n{server.log()[-3000:]}")


def test_django_views_run_commands_on_the_projects_worker(redis_url: str) -> None:
    port = _free_port()
    env = {
        "DJANGO_SETTINGS_MODULE": "djproject.settings",
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "SNAKEPIT_POOL_SIZE": "1",
        "SNAKEPIT_QUEUE_PREFIX": f"dj{uuid.uuid4().hex[:6]}",
    }
    hostname = f"django-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    worker_argv = [sys.executable, "-m", "celery", "-A", "djproject", "worker", "-n", hostname]
    server_argv = [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
    caller = Celery("django-test", broker=redis_url, backend=redis_url, set_as_current=False)
    base = f"http://127.0.0.1:{port}"
    try:
        with (
            WorkerProcess(argv=[*worker_argv, "--without-mingle"], env=env, cwd=str(EXAMPLE)) as worker,
            WorkerProcess(argv=server_argv, env=env, cwd=str(EXAMPLE)) as server,
        ):
            worker.wait_ready(caller, hostname)
            _wait_http(server, f"{base}/health/")

            assert _request(f"{base}/add/?a=5&b=3") == (200, {"sum": 8})
            assert _request(f"{base}/async/add/?a=2&b=2") == (200, {"sum": 4})  # WSGI: a loop per request
            status, body = _request(f"{base}/add/?a=five")
            assert status == 400 and "a='five'" in body["message"]

            status, started = _request(
                f"{base}/tasks/", {"command": "echo", "args": {"big": 2**40, "none": None}}
            )
            assert status == 202
            status, failed = _request(
                f"{base}/tasks/", {"command": "compute", "args": {"operation": "divide", "a": 1, "b": 0}}
            )
            assert status == 202

            def finished(task_id: str) -> dict[str, Any]:
                deadline = time.monotonic() + 20
                while True:
                    _, state = _request(f"{base}/tasks/{task_id}/")
                    if state["state"] in ("SUCCESS", "FAILURE") or time.monotonic() > deadline:
                        return state
                    time.sleep(0.05)

            ok = finished(started["id"])
            assert ok["state"] == "SUCCESS" and ok["result"] == {"echoed": {"big": 2**40, "none": None}}
            bad = finished(failed["id"])
            assert bad["state"] == "FAILURE" and bad["error"] == "CommandError"
            assert "ZeroDivisionError" in bad["message"] or "division" in bad["message"]

            # The worker's pool saw exactly the project's calls: add 5+3, async add 2+2, echo, divide.
            stats = get_stats(caller, destination=[hostname], timeout=5)
            assert stats["nodes"][hostname]["pools"]["python"]["requests"] == 4
            assert stats["errors"] == 1
            assert "GET /add/?a=5&b=3" in server.log()
    finally:
        caller.close()


def test_the_async_view_awaits_aexecute_under_an_asgi_server(redis_url: str) -> None:
    pytest.importorskip("uvicorn", reason="the [fastapi] extra (uvicorn) is not installed")
    port = _free_port()
    env = {
        "DJANGO_SETTINGS_MODULE": "djproject.settings",
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "SNAKEPIT_POOL_SIZE": "2",
        "SNAKEPIT_QUEUE_PREFIX": f"dj{uuid.uuid4().hex[:6]}",
    }
    hostname = f"django-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    worker_argv = [sys.executable, "-m", "celery", "-A", "djproject", "worker", "-n", hostname]
    server_argv = [sys.executable, "-m", "uvicorn", "djproject.asgi:application", "--port", str(port)]
    caller = Celery("django-test", broker=redis_url, backend=redis_url, set_as_current=False)
    base = f"http://127.0.0.1:{port}"
    try:
        with (
            WorkerProcess(argv=[*worker_argv, "--without-mingle"], env=env, cwd=str(EXAMPLE)) as worker,
            WorkerProcess(
                argv=[*server_argv, "--timeout-graceful-shutdown", "5"], env=env, cwd=str(EXAMPLE)
            ) as server,
        ):
            worker.wait_ready(caller, hostname)
            _wait_http(server, f"{base}/health/")
            # Many requests at once on uvicorn's one loop: each awaits its call, none blocks the others.
            with ThreadPoolExecutor(20) as pool:
                answers = list(pool.map(lambda i: _request(f"{base}/async/add/?a={i}&b=1"), range(20)))
            assert answers == [(200, {"sum": i + 1}) for i in range(20)]
            status, body = _request(f"{base}/async/add/?a=five")
            assert status == 400 and "a='five'" in body["message"]
            stats = get_stats(caller, destination=[hostname], timeout=5)
            assert stats["nodes"][hostname]["pools"]["python"]["requests"] == 20
    finally:
        caller.close()

"""examples/flask_app against a real worker of its own app (install() on a user's Celery app)."""

from __future__ import annotations

import importlib.util
import socket
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType

import pytest

from snakepit_celery.integration.workerproc import WorkerProcess

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flask_app"


def _load_example(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> ModuleType:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(EXAMPLE))  # app.py imports its sibling modules
    spec = importlib.util.spec_from_file_location(f"flask_example_{uuid.uuid4().hex[:6]}", EXAMPLE / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_views_call_execute_and_read_results(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "SNAKEPIT_POOL_SIZE": "1",
        "SNAKEPIT_QUEUE_PREFIX": f"flask{uuid.uuid4().hex[:6]}",
    }
    example = _load_example(monkeypatch, env)
    example.celery_app.set_current()
    hostname = f"flask-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "app:celery_app",
        "worker",
        "-n",
        hostname,
        "--without-mingle",
    ]
    try:
        with WorkerProcess(argv=argv, env=env, cwd=str(EXAMPLE)) as worker:
            worker.wait_ready(example.celery_app, hostname)
            client = example.app.test_client()
            assert client.get("/add?a=5&b=3").get_json() == {"sum": 8}

            started = client.post(
                "/tasks", json={"command": "compute", "args": {"operation": "divide", "a": 1, "b": 0}}
            )
            assert started.status_code == 202
            task_id = started.get_json()["id"]
            deadline = time.monotonic() + 10
            while (status := client.get(f"/tasks/{task_id}").get_json())["state"] == "PENDING":
                assert time.monotonic() < deadline, status
                time.sleep(0.05)
            assert status == {
                "state": "FAILURE",
                "error": "CommandError",
                "message": "ZeroDivisionError: division by zero",
            }
    finally:
        example.celery_app.close()


def test_a_bad_environment_stops_the_worker_naming_the_field(redis_url: str) -> None:
    env = {
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "SNAKEPIT_START_METHOD": "telepathy",
    }
    argv = [sys.executable, "-m", "celery", "-A", "app:celery_app", "worker"]
    with WorkerProcess(argv=argv, env=env, cwd=str(EXAMPLE)) as worker:
        assert worker.wait(60) not in (None, 0)
        assert "start_method: 'telepathy' is not one of spawn, preload" in worker.log()

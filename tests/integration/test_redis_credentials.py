"""A worker whose snakepit Redis refuses its password stops at start, naming the setting.

The Redis is a real ``redis-server --requirepass`` of the test's own; the worker
is the CLI's, as a user starts it. Without the check it would retry the
password for ever (the leases, the call ledger) and look alive meanwhile.
"""

from __future__ import annotations

import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redisprocs import RedisProcess

from snakepit_celery.api import create_app
from snakepit_celery.config import SnakepitConfig
from snakepit_celery.integration.workerproc import WorkerProcess

CLI = [sys.executable, "-m", "snakepit_celery.cli", "worker"]
PASSWORD = "right-pw-4c1b"
WRONG = "wrong-pw-9e2f"


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[RedisProcess]:
    with RedisProcess("--requirepass", PASSWORD, password=PASSWORD) as server:
        yield server


def _env(broker: str, **extra: str) -> dict[str, str]:
    prefix = f"auth{uuid.uuid4().hex[:8]}"
    return {
        "SNAKEPIT_BROKER_URL": broker,
        "SNAKEPIT_QUEUE_PREFIX": prefix,
        "SNAKEPIT_POOL_SIZE": "1",
        **extra,
    }


def _refused(env: dict[str, str], tmp_path: Path) -> str:
    """Start a worker that must stop by itself; its log."""
    with WorkerProcess(
        argv=[*CLI, "-n", f"{env['SNAKEPIT_QUEUE_PREFIX']}@%h"], env=env, cwd=str(tmp_path)
    ) as w:
        code = w.wait(60)
        log = w.log()
    assert code not in (None, 0), f"the worker did not stop (exit {code}):\n{log[-3000:]}"
    return log


def test_a_wrong_snakepit_redis_password_stops_the_worker_naming_the_variable(
    locked_redis: RedisProcess, redis_url: str, tmp_path: Path
) -> None:
    env = _env(redis_url, SNAKEPIT_REDIS_URL=f"redis://:{WRONG}@127.0.0.1:{locked_redis.port}/0")
    log = _refused(env, tmp_path)
    assert "configuration refused: SNAKEPIT_REDIS_URL: the snakepit Redis at" in log, log[-3000:]
    assert f"redis://127.0.0.1:{locked_redis.port}/0 refused the worker's credentials" in log
    assert WRONG not in log and PASSWORD not in log
    assert "Traceback" not in log


def test_no_password_for_a_result_backend_that_needs_one_names_result_backend(
    locked_redis: RedisProcess, redis_url: str, tmp_path: Path
) -> None:
    # No SNAKEPIT_REDIS_URL: the snakepit Redis is the result backend (resolve_redis_url's order).
    env = _env(redis_url, SNAKEPIT_RESULT_BACKEND=f"redis://127.0.0.1:{locked_redis.port}/1")
    log = _refused(env, tmp_path)
    assert "result_backend (SNAKEPIT_RESULT_BACKEND): the snakepit Redis at" in log, log[-3000:]


def test_the_right_password_starts_the_worker(
    locked_redis: RedisProcess, redis_url: str, tmp_path: Path
) -> None:
    env = _env(redis_url, SNAKEPIT_REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{locked_redis.port}/0")
    hostname = f"{env['SNAKEPIT_QUEUE_PREFIX']}@{socket.gethostname()}"
    app = create_app(SnakepitConfig.from_env(env))
    try:
        with WorkerProcess(argv=[*CLI, "-n", hostname, "--without-mingle"], env=env, cwd=str(tmp_path)) as w:
            w.wait_ready(app, hostname)
            assert app.tasks["snakepit.execute"].delay("ping", {}).get(timeout=20)["message"] == "pong"
            assert w.stop() == 0
    finally:
        app.close()

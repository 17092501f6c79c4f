"""The ``snakepit-celery`` command and the ready-made app, as subprocesses against the test Redis."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from snakepit_celery.api import create_app
from snakepit_celery.config import SnakepitConfig
from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.integration.workerproc import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "snakepit_celery.cli"]


def _private_env(url: str) -> dict[str, str]:
    return {
        "SNAKEPIT_BROKER_URL": url,
        "SNAKEPIT_QUEUE_PREFIX": f"cli{uuid.uuid4().hex[:8]}",
        "SNAKEPIT_POOL_SIZE": "1",
    }


@pytest.mark.parametrize("launcher", ["snakepit-celery", "celery -A snakepit_celery"])
def test_worker_from_the_cli_and_the_ready_made_app(launcher: str, redis_url: str, tmp_path: Path) -> None:
    env = _private_env(redis_url)
    hostname = f"{env['SNAKEPIT_QUEUE_PREFIX']}@{socket.gethostname()}"
    if launcher == "snakepit-celery":
        argv = [
            *CLI,
            "worker",
            "--config",
            str(ROOT / "worker_configs/python-only.toml"),
            "--broker",
            redis_url,
        ]
    else:
        argv = [sys.executable, "-m", "celery", "-A", "snakepit_celery", "worker"]
    app = create_app(SnakepitConfig.from_env(env))
    try:
        with WorkerProcess(
            argv=[*argv, "-n", hostname, "--without-mingle"], env=env, cwd=str(tmp_path)
        ) as worker:
            worker.wait_ready(app, hostname)
            result = app.tasks["snakepit.execute"].delay("compute", {"operation": "add", "a": 5, "b": 3})
            assert result.get(timeout=10)["result"] == 8

            status = subprocess.run(
                [*CLI, "status", "--broker", redis_url, "--timeout", "2"], env={**env}, capture_output=True,
                text=True, timeout=60, check=False,
            )  # fmt: skip
            assert status.returncode == 0, status.stderr
            assert hostname in status.stdout and "python" in status.stdout

            as_json = subprocess.run(
                [*CLI, "status", "--broker", redis_url, "--json"], capture_output=True, text=True, timeout=60,
                check=True,
            )  # fmt: skip
            stats = json.loads(as_json.stdout)
            assert stats["nodes"][hostname]["pools"]["python"]["size"] == 1
            assert worker.stop() == 0
    finally:
        app.close()


def test_status_without_workers_says_so(redis_url: str) -> None:
    out = subprocess.run([*CLI, "status", "--broker", redis_url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "no snakepit worker answered" in out.stderr


def test_cli_refuses_a_bad_config_naming_the_field(tmp_path: Path, redis_url: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[pools.python]\nsize = 2\nqueue_timeout = -1\n")
    out = subprocess.run(
        [*CLI, "worker", "--config", str(bad), "--broker", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "pools.python.queue_timeout: -1 must be >= 0" in out.stderr


def test_ready_made_app_refuses_a_bad_environment(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    env = {**_private_env(redis_server.url(0)), "SNAKEPIT_POOL_SIZE": "many"}
    argv = [sys.executable, "-m", "celery", "-A", "snakepit_celery", "worker"]
    with WorkerProcess(argv=argv, env=env, cwd=str(tmp_path)) as worker:
        assert worker.wait(60) not in (None, 0)
        assert "SNAKEPIT_POOL_SIZE: 'many' is not a whole number" in worker.log()

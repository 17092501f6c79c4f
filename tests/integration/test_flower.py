"""A real Flower against the test broker: tasks readable by command, pool stats on the worker page.

Flower 2.2 refuses its HTTP API without auth unless ``FLOWER_UNAUTHENTICATED_API``
is set; the test shows both.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from itworkers import HERE, Worker, WorkerFactory

from snakepit_celery import CommandError
from snakepit_celery.integration.workerproc import WorkerFailed, WorkerProcess


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _flower(worker: Worker, port: int, **env: str) -> WorkerProcess:
    argv = [sys.executable, "-m", "celery", "-A", "itapp", "flower", f"--port={port}", "--address=127.0.0.1"]
    argv.append("--inspect_timeout=5000")  # ms; a loaded test machine answers inspect slowly
    process = WorkerProcess(argv=argv, env={**worker.env, **env}, cwd=str(HERE)).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not process.alive():
            raise WorkerFailed(f"flower exited:\n{process.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=1) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.05)
    process.close()
    raise WorkerFailed(f"flower did not answer within 30s:\n{process.log()[-3000:]}")


def _poll(what: str, probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout}s; last: {last!r}")


def test_flower_shows_commands_and_pool_stats(worker_factory: WorkerFactory) -> None:
    worker = worker_factory({"python": {"size": 2}}, name="flower")
    port = _free_port()
    flower = _flower(worker, port, FLOWER_UNAUTHENTICATED_API="true")
    try:
        base = f"http://127.0.0.1:{port}"
        # Flower learns of the worker from its events; then tasks sent are tracked.
        _poll("the worker in Flower", lambda: worker.hostname in (_get(f"{base}/api/workers")[1] or {}))
        ok = worker.execute.delay("compute", {"operation": "add", "a": 5, "b": 3})
        assert ok.get(timeout=10)["result"] == 8
        failed = worker.execute.apply_async(("compute", {"operation": "divide", "a": 1, "b": 0}))
        with pytest.raises(CommandError):
            failed.get(timeout=10)

        def tasks_done() -> dict[str, Any] | None:
            status, tasks = _get(f"{base}/api/tasks")
            assert status == 200, tasks
            mine = {tid: tasks.get(tid) for tid in (ok.id, failed.id)}
            finished = all(t and t.get("state") in ("SUCCESS", "FAILURE") for t in mine.values())
            return mine if finished else None

        tasks = _poll("both tasks finished in Flower", tasks_done)
        for task in tasks.values():
            assert task["name"] == "snakepit.execute"
            assert "'compute'" in task["args"]  # the command name leads the arguments
            assert task["worker"] == worker.hostname
            assert "'pool': 'python'" in task["kwargs"]
        assert "'operation': 'add'" in tasks[ok.id]["args"] and tasks[ok.id]["state"] == "SUCCESS"
        assert "8" in tasks[ok.id]["result"]
        assert tasks[failed.id]["state"] == "FAILURE" and "ZeroDivisionError" in tasks[failed.id]["exception"]

        # The worker page's stats come from `inspect stats`: our bootstep's info() is in it.
        # Flower keeps the last answer when a refresh's inspect times out, and may
        # hold one from before the calls: wait for one taken after them.
        def worker_stats() -> dict[str, Any] | None:
            status, workers = _get(f"{base}/api/workers?refresh=1")
            assert status == 200, workers
            mine = workers.get(worker.hostname) or {}
            pools = ((mine.get("stats") or {}).get("snakepit") or {}).get("pools") or {}
            return mine if (pools.get("python") or {}).get("requests", 0) >= 2 else None

        page = _poll("the worker's stats in Flower", worker_stats)
        snakepit = page["stats"]["snakepit"]
        python = snakepit["pools"]["python"]
        assert (
            python["size"] == 2
            and python["workers"] == 2
            and python["requests"] == 2
            and python["errors"] == 1
        )
        assert sorted(b["pid"] for b in python["bridges"]) == sorted(worker.bridge_pids())
        assert "snakepit.execute" in page["registered"]
        # The task detail page's API names the command too.
        status, info = _get(f"{base}/api/task/info/{ok.id}")
        assert status == 200 and info["name"] == "snakepit.execute" and "'compute'" in info["args"]
    finally:
        flower.close()


def test_flower_api_needs_auth_or_the_unauthenticated_switch(worker_factory: WorkerFactory) -> None:
    worker = worker_factory({"python": {"size": 1}}, name="flowerauth", wait=False)
    port = _free_port()
    flower = _flower(worker, port)  # no FLOWER_UNAUTHENTICATED_API, no auth
    try:
        status, body = _get(f"http://127.0.0.1:{port}/api/workers")
        assert status == 401 and "FLOWER_UNAUTHENTICATED_API" in body
    finally:
        flower.close()

"""The worker's Prometheus endpoint, scraped after real calls through a real worker.

Also drives the ``snakepit_restart`` control command the way an operator does
(``celery -A app control snakepit_restart POOL``) and reads the restarts back.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from itworkers import HERE, Worker, WorkerFactory
from prometheus_client.parser import text_string_to_metric_families

from snakepit_celery import CommandError, UnknownCommand
from snakepit_celery.streaming import stream

REPO = Path(__file__).resolve().parents[2]
POOLS = {
    "python": {"size": 2},
    "gate": {"size": 1, "queue_timeout": 30.0, "handler": "tests.handlers:TestHandler"},
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def metrics_worker(worker_factory: WorkerFactory) -> tuple[Worker, int]:
    port = _free_port()
    env = {
        "SNAKEPIT_METRICS_PORT": str(port),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    }
    return worker_factory(POOLS, name="metrics", env=env, args=("--concurrency", "6")), port


def test_metrics_endpoint_counts_real_calls(metrics_worker: tuple[Worker, int], tmp_path: Path) -> None:
    worker, port = metrics_worker
    before = scrape(port)
    assert value(before, "snakepit_pool_size", pool="python") == 2
    assert value(before, "snakepit_pool_bridges_alive", pool="gate") == 1
    assert value(before, "snakepit_bridge_startup_seconds_count", pool="python") == 2
    assert value(before, "snakepit_requests_total", pool="python", command="compute", outcome="ok") == 0

    for i in range(3):
        assert worker.execute.delay("compute", {"operation": "add", "a": i, "b": 1}).get(timeout=10)
    with pytest.raises(CommandError):
        worker.execute.delay("compute", {"operation": "divide", "a": 1, "b": 0}).get(timeout=10)
    unknown = worker.execute.delay("no_such_command", {})
    with pytest.raises(UnknownCommand):
        unknown.get(timeout=10)
    # The worker's log has one structured line per call, with the Celery task id.
    line = "snakepit request pool=python command=no_such_command outcome=error"
    logged = [ln for ln in worker.process.log().splitlines() if line in ln]
    assert len(logged) == 1 and f"task_id={unknown.id} session_id=-" in logged[0]
    with stream("ping_stream", {"count": 5, "interval": 0}, app=worker.app) as s:
        assert [c["seq"] for c in s] == [0, 1, 2, 3, 4]

    # One call that has to wait for the gate pool's only bridge: one queue wait.
    gate = tmp_path / "open"
    held = worker.execute.apply_async(("wait_file", {"path": str(gate)}), kwargs={"pool": "gate"})
    worker.wait_for(lambda s: s["pools"]["gate"]["busy"] == 1)
    waiting = worker.execute.apply_async(("ping", {}), kwargs={"pool": "gate"})
    worker.wait_for(lambda s: s["pools"]["gate"]["queued"] == 1)
    gate.touch()
    assert held.get(timeout=10)["released"] and waiting.get(timeout=10)["status"] == "ok"

    samples = scrape(port)
    ok = value(samples, "snakepit_requests_total", pool="python", command="compute", outcome="ok")
    assert ok == 3
    assert value(samples, "snakepit_requests_total", pool="python", command="compute", outcome="error") == 1
    assert (
        value(samples, "snakepit_requests_total", pool="python", command="no_such_command", outcome="error")
        == 1
    )
    assert value(samples, "snakepit_request_duration_seconds_count", pool="python", command="compute") == 4
    assert value(samples, "snakepit_request_duration_seconds_sum", pool="python", command="compute") > 0
    buckets = [
        v
        for (name, labels), v in samples.items()
        if name == "snakepit_request_duration_seconds_bucket" and ("command", "compute") in labels
    ]
    assert max(buckets) == 4  # the +Inf bucket holds every call
    assert value(samples, "snakepit_stream_chunks_total", pool="python", command="ping_stream") == 5
    assert value(samples, "snakepit_requests_total", pool="python", command="ping_stream", outcome="ok") == 1
    assert value(samples, "snakepit_queue_wait_seconds_count", pool="gate") == 1
    assert value(samples, "snakepit_queue_wait_seconds_sum", pool="gate") > 0
    stats = worker.stats()["pools"]
    assert value(samples, "snakepit_pool_requests_total", pool="python") == stats["python"]["requests"] == 6
    assert value(samples, "snakepit_pool_errors_total", pool="python") == 2
    assert value(samples, "snakepit_pool_busy", pool="python") == 0
    assert value(samples, "snakepit_pool_rss_bytes", pool="python") > 1_000_000


def test_restart_control_command_restarts_a_pool_and_one_bridge(metrics_worker: tuple[Worker, int]) -> None:
    worker, port = metrics_worker
    old = [b["pid"] for b in worker.stats()["pools"]["python"]["bridges"]]
    env = {**os.environ, **worker.env}
    base = [sys.executable, "-m", "celery", "-A", "itapp", "control", "-d", worker.hostname, "-t", "20"]
    done = subprocess.run(
        [*base, "snakepit_restart", "python"], env=env, cwd=HERE, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    stats = worker.wait_for(
        lambda s: s["pools"]["python"]["restarts"] == 2 and s["pools"]["python"]["workers"] == 2
    )
    new = [b["pid"] for b in stats["pools"]["python"]["bridges"]]
    assert not set(new) & set(old) and all(str(pid) in done.stdout for pid in new)

    one = new[0]
    done = subprocess.run(
        [*base, "snakepit_restart", "python", str(one)],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    stats = worker.wait_for(
        lambda s: s["pools"]["python"]["restarts"] == 3 and s["pools"]["python"]["workers"] == 2
    )
    assert new[1] in [b["pid"] for b in stats["pools"]["python"]["bridges"]]
    assert one not in [b["pid"] for b in stats["pools"]["python"]["bridges"]]

    deadline = time.monotonic() + 10
    while (
        value(scrape(port), "snakepit_bridge_exits_total", pool="python") < 3 and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    samples = scrape(port)
    assert value(samples, "snakepit_bridge_restarts_total", pool="python") == 3
    assert value(samples, "snakepit_bridge_exits_total", pool="python") == 3
    assert value(samples, "snakepit_bridge_startup_seconds_count", pool="python") == 5
    assert value(samples, "snakepit_bridge_restarts_total", pool="gate") == 0

    # A wrong pid is a clear error in the reply, and the worker serves on.
    done = subprocess.run(
        [*base, "snakepit_restart", "python", "1"],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "no bridge with pid 1" in done.stdout, done.stdout + done.stderr
    assert worker.execute.delay("ping", {}).get(timeout=10)["status"] == "ok"

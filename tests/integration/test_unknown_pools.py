"""A pool nobody hosts is never a silent hang, with a Redis and a RabbitMQ broker.

One worker per broker hosts ``python`` and ``gpu``. The caller's own config
names ``python`` and ``node``: ``gpu`` is a pool only a live worker knows, and
``node`` a configured pool no worker hosts. A typo (``pyhton``) is refused at
once, from every way of sending; a stream to ``node`` says within seconds that
no live worker hosts it; ``status`` lists ``node`` as having no live worker.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, chain, chord, group
from itworkers import Worker, WorkerFactory
from itworkers import _alloc_db as alloc_db

from snakepit_celery import (
    PoolNotFound,
    SnakepitConfig,
    StreamError,
    batch_map,
    python,
    resolve_redis_url,
    stream,
)
from snakepit_celery.api import config_for, create_app
from snakepit_celery.cli import format_status, status_of
from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.integration.known_pools import HIT_TTL
from snakepit_celery.integration.workerproc import WorkerProcess
from snakepit_celery.sessions.lease import LeaseTable
from snakepit_celery.streaming.pending import NO_WORKER_GRACE

CLI = [sys.executable, "-m", "snakepit_celery.cli"]
#: The pools of the callers' own config (not the worker's).
CALLER_POOLS = ["python", "node"]


@pytest.fixture(scope="module", params=["redis", "amqp"])
def worker(request: pytest.FixtureRequest, module_worker_factory: WorkerFactory) -> Worker:
    return module_worker_factory(
        {"python": {"size": 1}, "gpu": {"size": 1}}, broker=request.param, name="pools"
    )


def registry(app: Celery, prefix: str) -> dict[str, list[str]]:
    """The live workers' pools, read straight from the lease registry (no cache)."""
    client = redis.Redis.from_url(resolve_redis_url(app))
    try:
        return LeaseTable(client, prefix).live_pools()
    finally:
        client.close()


def close_app(app: Celery) -> None:
    """Close the app and its result backend's Redis connections (``app.close()`` leaves those)."""
    app.close()
    backend = app.backend
    consumer = getattr(backend, "result_consumer", None)
    if consumer is not None and hasattr(consumer, "stop"):
        consumer.stop()
    client = backend.__dict__.get("client")
    if client is not None:
        client.connection_pool.disconnect()


@pytest.fixture(scope="module")
def caller(worker: Worker) -> Iterator[Celery]:
    app = worker.caller_app(CALLER_POOLS)
    deadline = time.monotonic() + 20
    while "gpu" not in registry(app, worker.prefix):  # the worker leases once its consumer is up
        assert time.monotonic() < deadline, f"the worker never registered its pools:\n{worker.process.log()}"
        time.sleep(0.05)
    try:
        yield app
    finally:
        close_app(app)


def _execute(app: Celery) -> Any:
    return app.tasks["snakepit.execute"]


SENDERS: dict[str, Callable[[Celery], object]] = {
    "delay": lambda app: _execute(app).delay("ping", {}, pool="pyhton"),
    "apply_async": lambda app: _execute(app).apply_async(("ping", {}), kwargs={"pool": "pyhton"}),
    "group": lambda app: group(_execute(app).s("ping", {}, pool="pyhton") for _ in range(5)).delay(),
    "chain_later_step": lambda app: chain(
        _execute(app).si("ping", {}), _execute(app).si("ping", {}, pool="pyhton")
    ).delay(),
    "chord": lambda app: chord(
        [_execute(app).s("compute", {"operation": "add", "a": 1, "b": 1}, pool="pyhton")] * 3
    )(app.tasks["itest.total"].s()),
    "stream": lambda app: stream("ping_stream", {"count": 3}, pool="pyhton", app=app),
    "execute_stream": lambda app: app.tasks["snakepit.execute_stream"].delay(
        "ping_stream", {}, pool="pyhton"
    ),
    "batch_map": lambda app: batch_map("ping", [{}] * 10, pool="pyhton", app=app).delay(),
    "execute_batch": lambda app: app.tasks["snakepit.execute_batch"].delay("ping", [{}], pool="pyhton"),
    "python.call": lambda app: python.call("math.gcd", [12, 18], pool="pyhton", app=app),
    "session": lambda app: app.tasks["snakepit.execute_in_session"].delay(
        "s-typo", "ping", {}, pool="pyhton"
    ),
}


@pytest.mark.parametrize("how", list(SENDERS))
def test_a_typo_pool_is_refused_at_once_naming_the_pools_there_are(
    how: str, caller: Celery, worker: Worker
) -> None:
    started = time.monotonic()
    with pytest.raises(PoolNotFound) as caught:
        SENDERS[how](caller)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"{how}: PoolNotFound took {elapsed:.2f}s"
    message = str(caught.value)
    assert message.startswith("no pool named 'pyhton': did you mean 'python'?"), message
    assert "python (config, 1 live worker)" in message
    assert "node (config, no live worker)" in message
    assert "gpu (1 live worker)" in message


def test_a_pool_only_a_live_worker_hosts_is_sent_to_it(caller: Celery, worker: Worker) -> None:
    gpu_pids = [b["pid"] for b in worker.stats()["pools"]["gpu"]["bridges"]]
    assert _execute(caller).delay("ping", {}, pool="gpu").get(timeout=10)["pid"] in gpu_pids
    with pytest.raises(PoolNotFound, match=r"no pool named 'gpu2': did you mean 'gpu'\?"):
        _execute(caller).delay("ping", {}, pool="gpu2")


def test_a_worker_only_pool_is_refused_once_its_worker_has_left(worker_factory: WorkerFactory) -> None:
    gpu = worker_factory({"gpu": {"size": 1}}, name="gpu")
    caller = gpu.caller_app(["python"])
    try:
        deadline = time.monotonic() + 20
        while "gpu" not in registry(caller, gpu.prefix):
            assert time.monotonic() < deadline, "the worker never registered its pools"
            time.sleep(0.05)
        assert _execute(caller).delay("ping", {}, pool="gpu").get(timeout=10)["pid"] in gpu.bridge_pids()
        assert gpu.process.stop() == 0  # a clean stop leaves its lease at once
        deadline = time.monotonic() + HIT_TTL + 5  # what the caller knew may be reused HIT_TTL s
        while True:
            try:
                _execute(caller).delay("ping", {}, pool="gpu").forget()
            except PoolNotFound as exc:
                assert str(exc) == "no pool named 'gpu': pools there are: python (config, no live worker)"
                break
            assert time.monotonic() < deadline, "a pool whose only worker left is still accepted"
            time.sleep(0.1)
    finally:
        close_app(caller)


def test_a_stream_to_a_configured_pool_no_worker_hosts_fails_within_seconds(
    caller: Celery, worker: Worker
) -> None:
    # python's one bridge is busy longer than the bound: a stream queued behind it must wait, not fail.
    busy = _execute(caller).delay("sleep", {"seconds": NO_WORKER_GRACE + 3})
    worker.wait_for(lambda stats: stats["pools"]["python"]["busy"] == 1)
    queued = stream("ping_stream", {"count": 3}, pool="python", start_timeout=60, app=caller)
    started = time.monotonic()
    with (
        pytest.raises(StreamError, match=r"no live worker hosts pool 'node'") as caught,
        stream("ping_stream", {"count": 3}, pool="node", start_timeout=60, app=caller) as unhosted,
    ):
        list(unhosted)
    elapsed = time.monotonic() - started
    assert NO_WORKER_GRACE - 0.5 < elapsed < NO_WORKER_GRACE + 3, f"took {elapsed:.1f}s: {caught.value}"
    assert "it was cancelled" in str(caught.value)
    with queued:
        assert [c["seq"] for c in queued] == [0, 1, 2]  # it ran once the bridge came free
    assert queued.outcome == "ok"
    busy.get(timeout=20)


def test_status_lists_the_configured_pools_no_live_worker_hosts(caller: Celery, worker: Worker) -> None:
    stats = status_of(caller, config_for(caller), timeout=2.0)
    assert stats["no_live_worker"] == ["node"]
    assert worker.hostname in stats["nodes"]
    rows = [line.split() for line in format_status(stats).splitlines()]
    assert ["(no", "live", "worker)", "node"] in rows


def test_status_from_the_cli_says_no_live_worker(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    # The CLI's own app (Celery's default control exchange) and a worker of the ready-made app.
    url = alloc_db(redis_server)
    env = {
        **os.environ,
        "SNAKEPIT_BROKER_URL": url,
        "SNAKEPIT_QUEUE_PREFIX": f"st{uuid.uuid4().hex[:8]}",
        "SNAKEPIT_POOL_SIZE": "1",
    }
    hostname = f"{env['SNAKEPIT_QUEUE_PREFIX']}@{socket.gethostname()}"
    config = tmp_path / "caller.toml"
    config.write_text("[pools.python]\n[pools.node]\n")
    worker_argv = [*CLI, "worker", "-n", hostname, "--without-mingle", "--without-gossip"]
    app = create_app(SnakepitConfig.from_env(env))
    try:
        with WorkerProcess(argv=worker_argv, env=env, cwd=str(tmp_path)) as worker:
            worker.wait_ready(app, hostname)
            argv = [*CLI, "status", "--config", str(config), "--timeout", "2"]
            table = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
            assert table.returncode == 0, table.stderr
            rows = [line.split() for line in table.stdout.splitlines()]
            assert ["(no", "live", "worker)", "node"] in rows, table.stdout
            assert [hostname, "python"] in [row[:2] for row in rows], table.stdout
            as_json = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True, timeout=60)
            stats = json.loads(as_json.stdout)
            assert stats["no_live_worker"] == ["node"]
            assert list(stats["nodes"]) == [hostname]
            assert worker.stop() == 0
    finally:
        app.close()

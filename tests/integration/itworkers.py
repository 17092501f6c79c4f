"""Real Celery workers in subprocesses, for the integration tests.

``WorkerFactory`` starts ``celery -A itapp worker`` with a config of pools,
waits until it answers a ping, and always stops it. Every worker group gets a
unique prefix for its queues and exchanges; on RabbitMQ those queues and
exchanges are deleted afterwards (only ours, never others'). The fixtures that
hand factories to tests are in ``conftest.py``; tests import the types from
here (``from itworkers import Worker``), never from ``conftest``.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from celery import Celery
from itapp import make_app

from snakepit_celery import SnakepitConfig
from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.integration.workerproc import WorkerProcess

HERE = Path(__file__).parent
#: Redis databases handed out in turn (0 is left to the ``redis_url`` fixture).
_next_db = iter(range(10**6))

#: Pids of workers that live for a whole module: their process trees are not orphans.
SHARED_ROOTS: set[int] = set()


def _alloc_db(server: EmbeddedRedis) -> str:
    import redis

    db = 1 + next(_next_db) % 15
    client = redis.Redis.from_url(server.url(db))
    client.flushdb()
    client.close()
    return server.url(db)


@dataclass
class Worker:
    """One running worker and a caller-side app that talks to it."""

    app: Celery
    hostname: str
    process: WorkerProcess
    config: SnakepitConfig
    prefix: str
    broker: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def execute(self) -> Any:
        return self.app.tasks["snakepit.execute"]

    def stats(self) -> dict[str, Any]:
        replies = self.app.control.broadcast(
            "snakepit_stats", destination=[self.hostname], reply=True, timeout=5.0
        )
        for reply in replies or []:
            if self.hostname in reply:
                return dict(reply[self.hostname])
        raise AssertionError(f"{self.hostname} did not answer snakepit_stats:\n{self.process.log()[-2000:]}")

    def caller_app(self, pools: list[str]) -> Celery:
        """A caller-side app of this worker group whose own config names ``pools`` (not the
        worker's): the caller of a worker-only pool, or of a configured pool nobody hosts.
        The test closes it."""
        from snakepit_celery.config import PoolConfig

        config = SnakepitConfig(pools=tuple(PoolConfig(name=n) for n in pools), queue_prefix=self.prefix)
        return make_app(broker=self.broker, backend=self.env["IT_BACKEND"], prefix=self.prefix, config=config)

    def bridge_pids(self) -> list[int]:
        return [
            int(b["pid"])
            for p in self.stats()["pools"].values()
            for b in p["bridges"]
            if b["pid"] is not None
        ]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
        """Poll the worker's stats until ``predicate`` holds; the stats then."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s; stats: {stats}")
            time.sleep(0.05)


def pool_toml(pools: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, table in pools.items():
        lines.append(f"[pools.{name}]")
        for key, value in table.items():
            lines.append(f"{key} = {value!r}".replace("'", '"'))
    return "\n".join(lines) + "\n"


class WorkerFactory:
    """Starts workers; ``close()`` stops every one of them and deletes their broker objects."""

    def __init__(self, tmp: Path, redis_server: EmbeddedRedis, request: pytest.FixtureRequest, shared: bool):
        self.tmp = tmp
        self.redis_server = redis_server
        self.request = request
        self.shared = shared
        self.workers: list[Worker] = []
        self.amqp_prefixes: list[tuple[str, SnakepitConfig, str, str]] = []

    def broker_url(self, kind: str) -> str:
        if kind == "redis":
            return _alloc_db(self.redis_server)
        return str(self.request.getfixturevalue("rabbitmq_url"))

    def __call__(
        self,
        pools: dict[str, dict[str, Any]] | None = None,
        *,
        broker: str = "redis",
        name: str = "w",
        prefix: str | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> Worker:
        pools = pools or {"python": {"size": 2}}
        prefix = prefix or f"it{uuid.uuid4().hex[:10]}"
        broker_url = broker if "://" in broker else self.broker_url(broker)
        backend = broker_url if broker_url.startswith("redis") else _alloc_db(self.redis_server)
        config_file = self.tmp / f"{prefix}-{name}.toml"
        config_file.write_text(pool_toml(pools))
        worker_env = {
            "IT_BROKER": broker_url,
            "IT_BACKEND": backend,
            "IT_PREFIX": prefix,
            "SNAKEPIT_CONFIG": str(config_file),
            "SNAKEPIT_QUEUE_PREFIX": prefix,
            **(env or {}),
        }
        config = SnakepitConfig.from_env(worker_env)
        app = make_app(broker=broker_url, backend=backend, prefix=prefix, config=config)
        hostname = f"{prefix}-{name}@{socket.gethostname()}"
        argv = ["-A", "itapp", "worker", "-n", hostname, "--loglevel", "INFO", "--without-mingle"]
        process = WorkerProcess([*argv, "--without-gossip", *args], env=worker_env, cwd=str(HERE))
        worker = Worker(app, hostname, process, config, prefix, broker_url, worker_env)
        self.workers.append(worker)
        if not broker_url.startswith("redis"):
            self.amqp_prefixes.append((prefix, config, broker_url, backend))
        process.start()
        if self.shared:
            SHARED_ROOTS.add(process.pid)
        if wait:
            process.wait_ready(app, hostname, timeout=60)
        return worker

    def close(self) -> None:
        survivors: list[str] = []
        for worker in self.workers:
            try:
                tree = psutil.Process(worker.process.pid).children(recursive=True)
            except psutil.Error:
                tree = []
            worker.process.close()
            SHARED_ROOTS.discard(worker.process.pid)
            worker.app.close()
            survivors += _reap(tree)
        for prefix, config, url, backend in self.amqp_prefixes:
            _delete_amqp_objects(url, prefix, config, backend)
        assert not survivors, f"processes outlived their worker: {survivors}"


@pytest.fixture
def worker_factory(
    tmp_path: Path, redis_server: EmbeddedRedis, request: pytest.FixtureRequest
) -> Iterator[WorkerFactory]:
    """Workers for one test, each stopped (and its broker objects deleted) at the test's end."""
    factory = WorkerFactory(tmp_path, redis_server, request, shared=False)
    try:
        yield factory
    finally:
        factory.close()


def _reap(procs: list[psutil.Process], timeout: float = 10.0) -> list[str]:
    """Wait for ``procs`` to end; kill and describe those that did not."""
    _gone, alive = psutil.wait_procs(procs, timeout=timeout)
    described = []
    for proc in alive:
        try:
            described.append(f"{proc.pid}: {' '.join(proc.cmdline())[:200]}")
            proc.kill()
        except psutil.Error:
            continue
    return described


def _session_queues(redis_url: str, prefix: str) -> list[str]:
    """The session queues of this worker group: one per session route left in Redis."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        routes = [k.decode() for k in client.scan_iter(f"{prefix}:route:*", count=1000)]
    finally:
        client.close()
    return [f"{prefix}.session.{key.rsplit(':', 1)[1]}" for key in routes]


def _delete_amqp_objects(url: str, prefix: str, config: SnakepitConfig, redis_url: str) -> None:
    """Remove the queues and exchanges this test made on the shared RabbitMQ (names with our prefix)."""
    from kombu import Connection

    queues = [config.queue_name(p.name) for p in config.pools] + [f"{prefix}.default"]
    queues += _session_queues(redis_url, prefix)
    exchanges = [*queues, f"{prefix}.control.pidbox", f"reply.{prefix}.control.pidbox", f"{prefix}.ev"]
    delete_queues(url, queues)
    with Connection(url) as conn:
        for exchange in exchanges:
            channel = conn.channel()
            try:
                channel.exchange_delete(exchange)
            except Exception:
                pass
            finally:
                channel.close()


def delete_queues(broker_url: str, names: list[str]) -> None:
    """Delete these queues on an AMQP broker; one already gone is no error."""
    from kombu import Connection

    with Connection(broker_url) as conn:
        for name in names:
            channel = conn.channel()
            with contextlib.suppress(Exception):  # already gone (expired, or never made)
                channel.queue_delete(name)
            with contextlib.suppress(Exception):  # the broker closed it after a failed delete
                channel.close()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it is truthy (its value then), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)

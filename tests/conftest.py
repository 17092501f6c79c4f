"""Fixtures every test folder shares: a private Redis, RabbitMQ, and the orphan check.

A missing service skips a test locally with the reason, but fails it under
``CI=true``: CI must never go green by skipping what it was meant to check.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator

import psutil
import pytest

from snakepit_celery.embedded import EmbeddedRedis

pytest_plugins = ("celery.contrib.pytest",)

#: Every process started by this test run inherits this mark in its environment,
#: so a process that outlived its test is found even after init adopted it.
RUN_MARK = "SNAKEPIT_TEST_RUN"
os.environ[RUN_MARK] = uuid.uuid4().hex
#: Pids of processes that live for the whole run on purpose (the test Redis).
LONG_LIVED: set[int] = set()

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_service(reason: str) -> None:
    """Skip the test locally; fail it in CI."""
    if IN_CI:
        pytest.fail(f"CI=true and a service is missing: {reason}")
    pytest.skip(reason)


def marked_processes() -> list[psutil.Process]:
    """Live processes started by this test run, other than pytest and the long-lived ones."""
    mark = os.environ[RUN_MARK]
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == me or proc.pid in LONG_LIVED:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(RUN_MARK) == mark:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture(autouse=True)
def no_orphans() -> Iterator[None]:
    """Fail a test that leaves any process of its own running (polled for 10 s)."""
    yield
    deadline = time.monotonic() + 10
    left = marked_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = marked_processes()
    if left:
        described = []
        for proc in left:
            try:
                described.append(f"{proc.pid}: {' '.join(proc.cmdline())[:200]}")
                proc.kill()
            except psutil.Error:
                continue
        pytest.fail("processes outlived the test: " + "; ".join(described))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A redis-server of this test run's own, on a free port (never the shared one)."""
    server = EmbeddedRedis()
    server.start()
    assert server.process is not None
    LONG_LIVED.add(server.process.pid)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """Database 0 of the test Redis, emptied for each test (it is ours alone)."""
    import redis

    client = redis.Redis.from_url(redis_server.url(0))
    client.flushall()
    client.close()
    return redis_server.url(0)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The machine's RabbitMQ (``SNAKEPIT_TEST_AMQP_URL`` overrides it)."""
    url = os.environ.get("SNAKEPIT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as exc:
        missing_service(f"RabbitMQ is not reachable on 127.0.0.1:5672: {exc}")
    return url

"""Fixtures every test folder shares: a private Redis, RabbitMQ, and the orphan check.

A missing service skips a test locally with the reason, but fails it under
``CI=true``: CI must never go green by skipping what it was meant to check.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from testprocs import LONG_LIVED, assert_no_orphans, missing_service

from snakepit_celery.embedded import EmbeddedRedis

pytest_plugins = ("celery.contrib.pytest",)


@pytest.fixture(autouse=True)
def no_orphans() -> Iterator[None]:
    """Fail a test that leaves any process of its own running (polled for 10 s)."""
    yield
    assert_no_orphans()


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

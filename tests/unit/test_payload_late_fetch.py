"""``snakepit.execute`` fetches its big arguments only as the pool builds the bridge's request.

In process, against a real Redis and a real Python bridge: the message is
encoded and decoded by the snakepit serializers and the task's signals are
sent as the worker sends them, so Celery's arguments are what a worker's
would be. Between ``task_prerun`` and ``task_postrun`` they keep the
references (a few bytes each, not the payload for the whole call); the
bridge still receives, and answers, the bytes themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery, current_app, signals
from kombu.serialization import dumps, loads

from snakepit_celery import PayloadExpired, SnakepitConfig, install
from snakepit_celery.payloads import MESSAGE_CONTENT_TYPE, PayloadRef, fetch_waiting, sending
from snakepit_celery.payloads.codec import dumps_result, loads_result
from tests.handlers import PoolFactory

PREFIX = "late"


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = Celery("late-fetch", broker="memory://", backend=redis_url, set_as_current=False)
    install(app, SnakepitConfig(redis_url=redis_url, payload_ref_threshold=1024, queue_prefix=PREFIX))
    yield app
    app.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    factory = PoolFactory()
    yield factory
    factory.close()


def received(app: Celery, args: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """``args`` sent to the default pool and decoded as the worker decodes a message."""
    with sending(app):
        content_type, encoding, text = dumps([args, {"pool": "default"}, {}], serializer="snakepit")
    assert content_type == MESSAGE_CONTENT_TYPE and "snakepit_ref" in text
    decoded_args, kwargs, _ = loads(text, content_type, encoding)
    return decoded_args, kwargs


def run_task(task: Any, task_id: str, args: list[Any], kwargs: dict[str, Any]) -> Iterator[None]:
    signals.task_prerun.send(sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs)
    try:
        yield
    finally:
        signals.task_postrun.send(
            sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs, retval=None, state="SUCCESS"
        )


def payload_keys(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(f"{PREFIX}:payload:*"))


def test_the_args_keep_their_references_while_the_bridge_gets_the_bytes(
    app: Celery, client: redis.Redis, make_pool: PoolFactory
) -> None:
    data, other = os.urandom(64 * 1024), os.urandom(32 * 1024)
    args, kwargs = received(app, ["echo", {"data": data, "more": [other, b"tiny"]}])
    pool = make_pool(size=1)
    for _ in run_task(app.tasks["snakepit.execute"], "late-1", args, kwargs):
        assert isinstance(args[1]["data"], PayloadRef)
        result = pool.execute(*args, request_id="late-1", resolve_args=fetch_waiting)  # as the task calls it
        assert result == {"echoed": {"data": data, "more": [other, b"tiny"]}}
        assert type(result["echoed"]["data"]) is bytes
        # Still references: the bytes fetched were the request's alone.
        assert isinstance(args[1]["data"], PayloadRef) and isinstance(args[1]["more"][0], PayloadRef)
        assert len(payload_keys(client)) == 2
    assert payload_keys(client) == []  # deleted once the call had finished


def test_another_task_still_sees_its_bytes_from_the_start(app: Celery, client: redis.Redis) -> None:
    data = os.urandom(64 * 1024)
    args, kwargs = received(app, ["echo", {"data": data}])
    other_task = app.tasks["celery.chord_unlock"]  # any task but snakepit.execute
    for _ in run_task(other_task, "late-2", args, kwargs):
        assert args[1]["data"] == data and type(args[1]["data"]) is bytes
    assert payload_keys(client) == []


def test_a_payload_gone_before_the_call_fails_it_with_payload_expired(
    app: Celery, client: redis.Redis, make_pool: PoolFactory
) -> None:
    args, kwargs = received(app, ["echo", {"data": os.urandom(64 * 1024)}])
    pool = make_pool(size=1)
    for _ in run_task(app.tasks["snakepit.execute"], "late-3", args, kwargs):
        client.delete(*payload_keys(client))  # as its TTL would
        with pytest.raises(PayloadExpired, match="is gone from the snakepit Redis"):
            pool.execute(*args, request_id="late-3", resolve_args=fetch_waiting)
        assert pool.stats()["requests"] == 0  # the bridge never saw it


def test_a_stored_result_holding_the_waiting_args_gets_its_own_copy(app: Celery, client: redis.Redis) -> None:
    # With result_extended, Celery stores the call's arguments in its result.
    data = os.urandom(64 * 1024)
    args, kwargs = received(app, ["echo", {"data": data}])
    previous = current_app._get_current_object()
    app.set_current()  # a worker's results are its current app's
    try:
        for _ in run_task(app.tasks["snakepit.execute"], "late-4", args, kwargs):
            meta = {"status": "SUCCESS", "result": None, "task_id": "late-4", "args": args, "kwargs": kwargs}
            text = dumps_result(meta)
    finally:
        previous.set_current()
    assert len(payload_keys(client)) == 1  # the argument's went with the call; this is the result's
    assert loads_result(text)["args"] == ["echo", {"data": data}]
    assert payload_keys(client) == []

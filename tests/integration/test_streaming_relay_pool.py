"""The relay between a real bridge pool and real Redis, without Celery.

What a worker does for ``snakepit.execute_stream``, minus the broker: a real
Python bridge subprocess streams over gRPC into :class:`StreamRelay`, a
:class:`Stream` reads it back from this run's private Redis.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from snakepit_celery.config import PoolConfig
from snakepit_celery.engine.pool import BridgePool
from snakepit_celery.errors import CommandError, InvalidArguments, UnknownCommand
from snakepit_celery.streaming import Stream, StreamRelay


@pytest.fixture
def pool() -> Iterator[BridgePool]:
    with tempfile.TemporaryDirectory() as run_dir:
        bridges = BridgePool(
            PoolConfig(size=2), run_dir=Path(run_dir), run_id=f"relay-{uuid.uuid4().hex[:8]}"
        )
        bridges.start()
        try:
            yield bridges
        finally:
            bridges.close(grace=2)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def relay(
    client: redis.Redis, pool: BridgePool, command: str, args: Any, **kw: Any
) -> tuple[str, threading.Thread]:
    task_id = uuid.uuid4().hex
    box: dict[str, Any] = {}

    def run() -> None:
        box["outcome"] = StreamRelay(client, task_id).run(
            lambda: pool.stream(command, args, request_id=task_id, **kw)
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return task_id, thread


def test_ten_thousand_bridge_chunks_in_order(client: redis.Redis, pool: BridgePool) -> None:
    task_id, thread = relay(client, pool, "ping_stream", {"count": 10_000, "interval": 0})
    chunks = list(Stream(client, task_id))
    thread.join(10)
    assert [c["seq"] for c in chunks] == list(range(10_000))
    assert [c["is_final"] for c in chunks].count(True) == 1
    assert chunks[-1]["outcome"] == "ok"


def test_bridge_errors_arrive_as_the_library_class(client: redis.Redis, pool: BridgePool) -> None:
    task_id, thread = relay(client, pool, "no_such_stream", {})
    with pytest.raises(UnknownCommand, match="no_such_stream"):
        list(Stream(client, task_id))
    task_id, thread = relay(client, pool, "process_large_dataset", {"chunk_size": 0})
    with pytest.raises(InvalidArguments, match="chunk_size"):
        list(Stream(client, task_id))
    thread.join(10)


def test_generator_error_mid_stream_follows_the_chunks_before_it(
    client: redis.Redis, pool: BridgePool
) -> None:
    # The generic call API is off by default; batch_inference refuses a non-list *while streaming*
    # only at the start, so use tail_and_analyze with a line that is not a string: it fails on it.
    task_id, thread = relay(client, pool, "tail_and_analyze", {"lines": ["INFO a", "ERROR b", 7, "INFO c"]})
    got = []
    with pytest.raises(CommandError) as info:
        for chunk in Stream(client, task_id):
            got.append(chunk["line_number"])
    thread.join(10)
    assert got == [1, 2]
    assert info.value.remote_type == "TypeError"


def streams_cancelled(pool: BridgePool, session_id: str) -> int:
    return int(pool.execute("info", {}, session_id=session_id)["streams_cancelled"])


def test_cancel_reaches_the_bridge_generator_within_200ms(client: redis.Redis, pool: BridgePool) -> None:
    # A session pins the stream and the `info` probe to one bridge, whose counter we read.
    session = f"cancel-{uuid.uuid4().hex[:6]}"
    before = streams_cancelled(pool, session)
    task_id, thread = relay(client, pool, "ping_stream", {"count": 0, "interval": 0.01}, session_id=session)
    with Stream(client, task_id) as reader:
        for _ in range(3):
            next(reader)
        started = time.monotonic()
        reader.cancel()
        while streams_cancelled(pool, session) == before:
            assert time.monotonic() - started < 5, "the generator was never closed"
        elapsed = time.monotonic() - started
        rest = list(reader)
    thread.join(5)
    assert elapsed < 0.2, f"cancel took {elapsed * 1000:.0f} ms to reach the generator"
    assert rest[-1] == {**rest[-1], "is_final": True, "outcome": "cancelled"}
    pool.end_session(session)


def test_session_stream_runs_on_the_session_bridge(client: redis.Redis, pool: BridgePool) -> None:
    session = f"pin-{uuid.uuid4().hex[:6]}"
    first = pool.execute("info", {}, session_id=session)
    task_id, thread = relay(client, pool, "ping_stream", {"count": 3}, session_id=session)
    assert len(list(Stream(client, task_id))) == 3
    thread.join(10)
    after = pool.execute("info", {}, session_id=session)
    assert after["pid"] == first["pid"] == pool.sessions()[session]
    assert after["streams_started"] == first["streams_started"] + 1
    pool.end_session(session)

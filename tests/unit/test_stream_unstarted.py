"""Streams whose relay never relays anything, against this run's private Redis: no bridge.

A reader must still end: cancelled while the relay waits for a bridge, the
source failing to open, an early final entry, a task nobody starts within
``start_timeout``, or one the result backend already knows revoked or failed
(see ``streaming.pending``). The relay and reader are the library's own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from snakepit_celery.errors import CommandCancelled, PoolNotFound, StreamError
from snakepit_celery.streaming import IterableSource, Outcome, RelaySettings, Stream, StreamKeys, StreamRelay
from snakepit_celery.streaming.protocol import end_unstarted


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def test_a_stream_cancelled_while_waiting_for_a_bridge_ends_at_once(client: redis.Redis) -> None:
    # open_source blocking on `bridge_free` is the pool's checkout waiting for a busy bridge.
    bridge_free = threading.Event()
    closed = threading.Event()
    iterated: list[int] = []

    class Chunks:
        def __iter__(self) -> Iterator[dict[str, int]]:
            iterated.append(1)
            yield {"i": 0}

        def close(self) -> None:
            closed.set()

    def open_source() -> IterableSource:
        bridge_free.wait(10)
        return IterableSource(Chunks())

    settings = RelaySettings(heartbeat_ttl=1, heartbeat_every=0.1)
    relay = StreamRelay(client, "t-wait", settings=settings)
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(outcome=relay.run(open_source)), daemon=True)
    thread.start()
    keys = StreamKeys.for_task("t-wait")
    try:
        deadline = time.monotonic() + 5
        while not client.exists(keys.alive):
            assert time.monotonic() < deadline, "the relay never started"
        # The heartbeat goes on while the relay waits, past its TTL: readers see a live relay.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert client.exists(keys.alive), "no heartbeat while waiting for a bridge"
        with Stream(client, "t-wait", block=0.1) as reader:
            reader.cancel("user left")
            assert list(reader) == [
                {"is_final": True, "outcome": "cancelled", "chunks": 0, "reason": "user left"}
            ]
        thread.join(2)
        assert not thread.is_alive() and box["outcome"].status == "cancelled"
    finally:
        bridge_free.set()
    # The bridge it got afterwards was given back unused (the source closed, nothing relayed).
    assert closed.wait(5)
    assert iterated == [] and client.xlen(keys.data) == 1


def test_a_foreign_error_while_opening_becomes_a_stream_error(client: redis.Redis) -> None:
    def open_source() -> IterableSource:
        raise ValueError("broken adapter")

    outcome = StreamRelay(client, "t-open-err").run(open_source)
    assert outcome.status == "error"
    with pytest.raises(StreamError, match="ValueError: broken adapter"):
        list(Stream(client, "t-open-err"))


def test_an_early_final_entry_stands_and_the_relay_accepts_it(client: redis.Redis) -> None:
    keys = StreamKeys.for_task("t-early-end")
    assert end_unstarted(client, keys, Outcome("cancelled", 0, reason="the task was revoked"))
    assert not end_unstarted(client, keys, Outcome("cancelled", 0, reason="again"))
    # The task runs later anyway (a worker that saw the revoke late): it must not crash on it.
    outcome = StreamRelay(client, "t-early-end", revoked=lambda: True).run(lambda: IterableSource([1]))
    assert outcome.status == "cancelled"
    with pytest.raises(CommandCancelled, match="the task was revoked"):
        list(Stream(client, "t-early-end"))
    assert client.ttl(keys.data) > 0


def test_a_stream_that_never_starts_ends_after_start_timeout_and_is_cancelled(client: redis.Redis) -> None:
    reader = Stream(client, "t-never-starts", block=0.1, start_timeout=0.3)
    reader.queue = "snakepit.pool.gpu"
    with pytest.raises(StreamError, match=r"not started within .*'snakepit\.pool\.gpu'"):
        list(reader)
    # A worker that takes it later ends it at once, without opening the source.
    opened: list[int] = []
    outcome = StreamRelay(client, "t-never-starts").run(lambda: opened.append(1) or IterableSource([]))  # type: ignore[func-returns-value]
    assert opened == [] and outcome.status == "cancelled" and "gave up" in outcome.reason


#: The tests below write task states as a worker would; Celery's Redis backend still calls
#: redis-py's deprecated ``setex`` for that (a warning of Celery's, not of this library).
records_states = pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    # A real Celery app whose result backend is this run's Redis: what a worker records there.
    celery_app = Celery("t-pending", broker=redis_url, backend=redis_url, set_as_current=False)
    yield celery_app
    celery_app.close()


@records_states
def test_a_task_revoked_before_its_relay_ends_the_reader(client: redis.Redis, app: Celery) -> None:
    app.backend.mark_as_revoked("t-revoked-queued", "revoked")
    with pytest.raises(CommandCancelled, match="revoked"):
        list(Stream(client, "t-revoked-queued", app=app, block=0.1))
    # ... and leaves a cancel request for a worker that never heard of the revoke.
    outcome = StreamRelay(client, "t-revoked-queued").run(lambda: IterableSource([1]))
    assert outcome.status == "cancelled"


@records_states
def test_a_task_failed_before_its_relay_ends_the_reader_with_its_error(
    client: redis.Redis, app: Celery
) -> None:
    app.backend.mark_as_failure("t-failed-early", PoolNotFound("no pool named 'gpu' on this worker"))
    with pytest.raises(PoolNotFound, match="gpu"):
        list(Stream(client, "t-failed-early", app=app, block=0.1))
    app.backend.mark_as_failure("t-failed-foreign", TypeError("missing 'command'"))
    with pytest.raises(StreamError, match="failed before relaying anything: TypeError"):
        list(Stream(client, "t-failed-foreign", app=app, block=0.1))
    app.backend.mark_as_done("t-done-elsewhere", {"outcome": "ok", "chunks": 3})
    with pytest.raises(StreamError, match="another Redis"):
        list(Stream(client, "t-done-elsewhere", app=app, block=0.1))


@records_states
def test_a_relayed_stream_is_not_judged_by_the_backend(client: redis.Redis, app: Celery) -> None:
    # The relay's final entry precedes the task state: the reader reads the entries, not the state.
    StreamRelay(client, "t-both").run(lambda: IterableSource([{"i": 0}]))
    app.backend.mark_as_revoked("t-both", "revoked")
    assert [c.get("i") for c in Stream(client, "t-both", app=app, block=0.1)] == [0, None]

"""``stream()`` end to end: caller -> broker -> real worker -> real bridge -> Redis -> caller.

The tests share one worker subprocess (``module_worker_factory``) with one
bridge, on this run's private Redis; streams live in the broker's database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil
import pytest
from celery.utils import uuid

from snakepit_celery.errors import CommandCancelled, CommandError, PoolNotFound, StreamError
from snakepit_celery.streaming import Stream, StreamKeys, stream
from snakepit_celery.streaming.caller import redis_client

#: The integration conftest's worker (``app``, ``execute``, ``stats()``, ``process``).
Worker = Any


@pytest.fixture(scope="module")
def worker(module_worker_factory: Any) -> Worker:
    # One bridge: the `info` probe then reads the counters of the bridge that ran the stream.
    return module_worker_factory({"python": {"size": 1}}, name="stream")  # type: ignore[no-any-return]


def info(worker: Worker) -> dict[str, Any]:
    return worker.execute.delay("info", {}).get(timeout=10)  # type: ignore[no-any-return]


def test_ten_thousand_chunks_in_order_and_complete(worker: Worker) -> None:
    with stream("ping_stream", {"count": 10_000, "interval": 0}, app=worker.app) as s:
        chunks = list(s)
    assert [c["seq"] for c in chunks] == list(range(10_000))
    assert [c["is_final"] for c in chunks].count(True) == 1
    assert chunks[-1]["outcome"] == "ok" and s.outcome == "ok"
    assert worker.app.AsyncResult(s.task_id).get(timeout=10) == {"outcome": "ok", "chunks": 10_000}


def test_late_follower_gets_every_chunk(worker: Worker) -> None:
    started = stream("ping_stream", {"count": 50, "interval": 0.005}, app=worker.app)
    worker.app.AsyncResult(started.task_id).get(timeout=20)  # the stream is over before anyone reads
    with Stream.follow(started.task_id, app=worker.app) as late:
        seqs = [c["seq"] for c in late]
    assert seqs == list(range(50))
    with started:
        assert [c["seq"] for c in started] == list(range(50))


def test_error_mid_stream_reaches_the_caller_after_the_chunks_before_it(worker: Worker) -> None:
    got = []
    with (
        pytest.raises(CommandError) as info,
        stream("tail_and_analyze", {"lines": ["INFO a", "ERROR b", 7, "INFO c"]}, app=worker.app) as s,
    ):
        for chunk in s:
            got.append(chunk["line_number"])
    assert got == [1, 2]
    assert info.value.remote_type == "TypeError"
    assert s.result is not None and s.result["error"]["type"] == "TypeError"
    result = worker.app.AsyncResult(s.task_id)
    with pytest.raises(CommandError):
        result.get(timeout=10)


def test_on_chunk_callback_form(worker: Worker) -> None:
    seen: list[dict[str, Any]] = []
    s = stream("batch_inference", {"batch_items": ["a", "b", "c"]}, on_chunk=seen.append, app=worker.app)
    assert [c.get("item") for c in seen] == ["a", "b", "c", None]
    assert seen[-1]["is_final"] is True and seen[-1]["total_processed"] == 3
    assert s.done and s.outcome == "ok"


def wait_for(condition: Callable[[], bool], limit: float) -> float:
    """Seconds until ``condition()`` held (fails past ``limit``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit, "condition never held"
    return time.monotonic() - started


def test_cancel_reaches_the_bridge_generator_within_200ms(worker: Worker) -> None:
    before = info(worker)["streams_cancelled"]
    with stream("ping_stream", {"count": 0, "interval": 0.01}, app=worker.app) as s:
        for _ in range(3):
            next(s)
        started = time.monotonic()
        s.cancel()
        # The bridge is the pool's only one: `info` runs on it once the stream let it go.
        wait_for(lambda: info(worker)["streams_cancelled"] > before, 5)
        elapsed = time.monotonic() - started
        rest = list(s)
    assert elapsed < 0.2, f"cancel reached the generator after {elapsed * 1000:.0f} ms"
    assert rest[-1]["outcome"] == "cancelled"
    assert worker.app.AsyncResult(s.task_id).state == "REVOKED"


def test_leaving_the_block_and_revoke_both_cancel(worker: Worker) -> None:
    before = info(worker)["streams_cancelled"]
    with stream("ping_stream", {"count": 0, "interval": 0.01}, app=worker.app) as s:
        next(s)
    wait_for(lambda: info(worker)["streams_cancelled"] == before + 1, 5)

    s = stream("ping_stream", {"count": 0, "interval": 0.01}, app=worker.app)
    next(s)
    worker.app.control.revoke(s.task_id)
    with pytest.raises(CommandCancelled, match="revoked"):
        list(s)
    wait_for(lambda: info(worker)["streams_cancelled"] == before + 2, 5)


def test_session_stream_binds_the_session_to_a_bridge(worker: Worker) -> None:
    chunks = list(stream("ping_stream", {"count": 3}, session_id="s-stream", app=worker.app))
    assert len(chunks) == 3
    bridges = worker.stats()["pools"]["python"]["bridges"]
    assert sum(b["sessions"] for b in bridges) == 1


@pytest.mark.slow
def test_memory_stays_flat_over_a_long_stream(worker: Worker) -> None:
    total, warmup = 200_000, 20_000
    worker_proc = psutil.Process(worker.process.pid)
    me = psutil.Process()
    marks: dict[str, tuple[int, int]] = {}
    with stream("ping_stream", {"count": total, "interval": 0}, app=worker.app) as s:
        for chunk in s:
            seq = chunk["seq"]
            if seq == warmup:
                marks["warm"] = (worker_proc.memory_info().rss, me.memory_info().rss)
            elif seq % 20_000 == 0 and seq > warmup:
                marks[str(seq)] = (worker_proc.memory_info().rss, me.memory_info().rss)
    assert s.outcome == "ok" and s.last_seq == total - 1
    end = (worker_proc.memory_info().rss, me.memory_info().rss)
    bound = 16 * 1024 * 1024
    peak_worker = max(m[0] for m in (*marks.values(), end))
    peak_caller = max(m[1] for m in (*marks.values(), end))
    assert peak_worker - marks["warm"][0] < bound, f"worker RSS grew {marks}"
    assert peak_caller - marks["warm"][1] < bound, f"caller RSS grew {marks}"


# -- streams whose relay never runs (or waits): the reader must still end -----------------------------


@pytest.fixture(scope="module")
def gpu_caller(worker: Worker) -> Any:
    """A caller whose config has a pool "gpu" that no worker hosts (sending to it is no error)."""
    app = worker.caller_app(["python", "gpu"])
    yield app
    app.close()


def test_a_stream_no_worker_takes_ends_after_start_timeout(worker: Worker, gpu_caller: Any) -> None:
    # No worker hosts the pool "gpu": its queue has no consumer; the task stays PENDING.
    s = stream("ping_stream", {"count": 3}, pool="gpu", start_timeout=1.0, app=gpu_caller)
    with pytest.raises(StreamError, match=rf"not started within .*'{worker.prefix}\.pool\.gpu'"), s:
        list(s)


def test_a_stream_revoked_in_the_broker_ends_promptly(worker: Worker, gpu_caller: Any) -> None:
    # Sits in a queue nobody consumes; the live worker hears the revoke and marks it REVOKED.
    s = stream("ping_stream", {"count": 3}, pool="gpu", app=gpu_caller)
    gpu_caller.control.revoke(s.task_id)
    started = time.monotonic()
    with pytest.raises(CommandCancelled, match="revoked"), s:
        list(s)
    assert time.monotonic() - started < 5


def send_stream(worker: Worker, args: tuple[Any, ...], kwargs: dict[str, Any], **options: Any) -> str:
    """Send the stream task by hand to the python pool's queue (what ``stream()`` never sends)."""
    task_id = uuid()
    queue = worker.config.queue_name("python")
    worker.app.send_task("snakepit.execute_stream", args, kwargs, task_id=task_id, queue=queue, **options)
    return task_id


def test_a_stream_task_that_fails_before_its_relay_ends_with_its_error(worker: Worker) -> None:
    # No command argument: Celery fails the task before its body (and the relay) runs.
    task_id = send_stream(worker, (), {"pool": "python"})
    with pytest.raises(StreamError, match="failed before relaying anything: TypeError"):
        list(Stream.follow(task_id, app=worker.app))
    # An unknown pool on the worker that took it: PoolNotFound, as the library's class.
    task_id = send_stream(worker, ("ping_stream", {"count": 3}), {"pool": "nope"})
    with pytest.raises(PoolNotFound, match="nope"):
        list(Stream.follow(task_id, app=worker.app))


def test_an_expired_stream_ends_for_a_reader_without_result_backend(worker: Worker) -> None:
    # The worker drops the expired message; its revoke handler writes the final entry.
    task_id = send_stream(
        worker,
        ("ping_stream", {"count": 3}),
        {"pool": "python"},
        expires=datetime.now(UTC) - timedelta(seconds=5),
    )
    reader = Stream(redis_client(None, worker.app), task_id, prefix=worker.prefix)  # Redis alone
    with pytest.raises(CommandCancelled, match="expired"):
        list(reader)


def busy_with_sleep(worker: Worker, seconds: float) -> Any:
    sleeping = worker.execute.delay("sleep", {"seconds": seconds})
    worker.wait_for(lambda stats: stats["busy"] == 1)
    return sleeping


def test_a_stream_revoked_while_waiting_for_the_busy_bridge_ends_promptly(worker_factory: Any) -> None:
    busy = worker_factory({"python": {"size": 1}}, name="busy")
    sleeping = busy_with_sleep(busy, 15)
    s = stream("ping_stream", {"count": 0, "interval": 0.01}, app=busy.app)  # endless
    client = redis_client(None, busy.app)
    alive = StreamKeys.for_task(s.task_id, busy.prefix).alive
    wait_for(lambda: bool(client.exists(alive)), 10)  # its relay runs, waiting for the bridge
    busy.app.control.revoke(s.task_id)
    started = time.monotonic()
    with pytest.raises(CommandCancelled, match="revoked"), s:
        list(s)
    assert time.monotonic() - started < 3
    assert not sleeping.ready()
    sleeping.get(timeout=30)

    # The bridge is free again, and the endless stream is not running on it: the
    # relay either never started it or cancelled it at once (timing decides which).
    def settled() -> bool:
        i = info(busy)
        return bool(i["streams_started"] == i["streams_closed"] == i["streams_cancelled"] <= 1)

    wait_for(settled, 10)
    assert busy.execute.delay("ping", {}).get(timeout=10)["status"] == "ok"


def test_a_stream_revoked_before_any_worker_thread_took_it_ends_promptly(worker_factory: Any) -> None:
    one = worker_factory({"python": {"size": 1}}, name="one", args=("--concurrency", "1"))
    sleeping = busy_with_sleep(one, 8)  # the only thread: the stream's message waits in the worker
    s = stream("ping_stream", {"count": 3}, app=one.app)
    one.app.control.revoke(s.task_id)
    started = time.monotonic()
    with pytest.raises(CommandCancelled, match="revoked"), s:
        list(s)
    assert time.monotonic() - started < 3
    assert not sleeping.ready()
    sleeping.get(timeout=30)
    # The task runs once the thread is free, and ends without borrowing the bridge.
    client = redis_client(None, one.app)
    data = StreamKeys.for_task(s.task_id, one.prefix).data
    wait_for(lambda: client.xlen(data) == 1, 10)
    assert info(one)["streams_started"] == 0

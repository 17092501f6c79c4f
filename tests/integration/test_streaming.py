"""``stream()`` end to end: caller -> broker -> real worker -> real bridge -> Redis -> caller.

The tests share one worker subprocess (``module_worker_factory``) with one
bridge, on this run's private Redis; streams live in the broker's database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest

from snakepit_celery.errors import CommandCancelled, CommandError
from snakepit_celery.streaming import Stream, stream

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

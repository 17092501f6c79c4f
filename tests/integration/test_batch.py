"""``execute_batch`` and ``batch_map`` on a real worker: order, errors, composition, progress.

One worker serves the module (nothing here kills it): one ``python`` pool of
two bridges, concurrency 4, Redis broker and backend.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import chain
from celery.result import AsyncResult
from itworkers import Worker, WorkerFactory

from snakepit_celery import (
    BatchItemError,
    CommandCancelled,
    InvalidArguments,
    Stream,
    batch_map,
    item_error,
    map,
)
from snakepit_celery.batch import chunk_size_for, pool_capacity


def add(i: int) -> dict[str, Any]:
    return {"operation": "add", "a": i, "b": i}


@pytest.fixture(autouse=True)
def _release_results(worker: Worker) -> Iterator[None]:
    """Release the test's AsyncResults while the test Redis still runs.

    Celery keeps some of them (a chord's parents, a chord result whose ``get()``
    raised a header's error) among the app's pending results; their ``__del__``
    at interpreter exit would unsubscribe from a Redis that is gone by then.
    """
    yield
    gc.collect()
    backend = worker.app.backend
    for obj in gc.get_objects():
        if isinstance(obj, AsyncResult) and obj.backend is backend:
            backend.remove_pending_result(obj)


def settle(result: Any) -> BaseException:
    """Wait for a failed chord's own outcome (Celery keeps a chord result whose ``get()`` raised
    a header's error among the pending results of the app until it is waited for itself)."""
    outcome = result.get(timeout=60, propagate=False)
    assert isinstance(outcome, BaseException), outcome
    return outcome


@pytest.fixture(scope="module")
def worker(module_worker_factory: WorkerFactory) -> Worker:
    return module_worker_factory({"python": {"size": 2}}, args=("--concurrency", "4"))


def test_map_of_10000_items_returns_every_result_in_input_order(worker: Worker) -> None:
    before = worker.stats()["pools"]["python"]["requests"]
    results = batch_map("compute", [add(i) for i in range(10_000)], app=worker.app).delay().get(timeout=120)
    assert [r["result"] for r in results] == [2 * i for i in range(10_000)]
    # Each item ran once: the pool served exactly that many calls.
    assert worker.stats()["pools"]["python"]["requests"] - before == 10_000


def test_map_is_still_available_under_its_first_name(worker: Worker) -> None:
    assert map is batch_map
    results = (
        map("compute", [add(i) for i in range(10)], app=worker.app, chunk_size=3).delay().get(timeout=30)
    )
    assert [r["result"] for r in results] == [2 * i for i in range(10)]


def test_execute_batch_alone_runs_the_items_concurrently_in_order(worker: Worker) -> None:
    task = worker.app.tasks["snakepit.execute_batch"]
    pids = task.delay("ping", [{} for _ in range(200)]).get(timeout=30)
    assert len({r["pid"] for r in pids}) == 2
    roots = task.delay("compute", [{"operation": "sqrt", "a": x * x} for x in range(50)]).get(timeout=30)
    assert [r["result"] for r in roots] == list(range(50))


def test_the_first_error_fails_the_map_with_its_index(worker: Worker) -> None:
    items = [{"operation": "divide", "a": 1, "b": 0 if i in (1234, 4321, 8000) else 1} for i in range(9000)]
    result = batch_map("compute", items, app=worker.app, chunk_size=500).delay()
    with pytest.raises(BatchItemError) as excinfo:
        result.get(timeout=120)
    settle(result)
    err = excinfo.value
    assert err.index in (1234, 4321, 8000)
    assert (err.error_class, err.remote_type) == ("CommandError", "ZeroDivisionError")
    assert "ZeroDivisionError" in err.remote_traceback
    assert err.retryable is False
    assert str(err).startswith(f"item {err.index}: ZeroDivisionError: ")


def test_within_one_batch_the_lowest_failed_index_is_reported(worker: Worker) -> None:
    items = [{"operation": "divide", "a": 1, "b": 0 if i in (37, 38, 90) else 1} for i in range(100)]
    with pytest.raises(BatchItemError) as excinfo:
        worker.app.tasks["snakepit.execute_batch"].delay("compute", items).get(timeout=30)
    assert excinfo.value.index == 37


def test_return_exceptions_keeps_every_other_result(worker: Worker) -> None:
    bad = {17, 2500, 9999}
    items = [{"operation": "divide", "a": i, "b": 0 if i in bad else 1} for i in range(10_000)]
    sig = batch_map("compute", items, app=worker.app, return_exceptions=True)
    results = sig.delay().get(timeout=120)
    assert len(results) == 10_000
    errors = {i: item_error(r) for i, r in enumerate(results) if item_error(r) is not None}
    assert set(errors) == bad
    for index, error in errors.items():
        assert error is not None and error.index == index and error.remote_type == "ZeroDivisionError"
    assert all(results[i]["result"] == i for i in range(10_000) if i not in bad)


def test_unknown_command_and_bad_items_are_named(worker: Worker) -> None:
    result = batch_map("no_such_command", [{}] * 5, app=worker.app).delay()
    with pytest.raises(BatchItemError) as excinfo:
        result.get(timeout=30)
    settle(result)
    assert excinfo.value.error_class == "UnknownCommand" and excinfo.value.index == 0
    with pytest.raises(InvalidArguments, match="items must be a list"):
        worker.app.tasks["snakepit.execute_batch"].delay("ping", {"not": "a list"}).get(timeout=30)
    with pytest.raises(InvalidArguments, match="chunk_size"):
        batch_map("ping", [{}], app=worker.app, chunk_size=0)
    # The worker is unharmed.
    assert worker.execute.delay("ping", {}).get(timeout=10)["status"] == "ok"


def test_map_composes_like_any_signature(worker: Worker) -> None:
    total = worker.app.tasks["itest.total"]
    sig = batch_map("compute", [add(i) for i in range(1000)], app=worker.app)
    assert (sig | total.s()).delay().get(timeout=60) == 2 * sum(range(1000))
    in_chain = chain(worker.execute.si("ping", {}), sig, total.s())
    assert in_chain.apply_async().get(timeout=60) == 2 * sum(range(1000))
    options = batch_map("compute", [add(i) for i in range(100)], app=worker.app).apply_async(countdown=0.2)
    assert [r["result"] for r in options.get(timeout=60)] == [2 * i for i in range(100)]


def test_an_empty_map_returns_an_empty_list(worker: Worker) -> None:
    assert batch_map("ping", [], app=worker.app).delay().get(timeout=30) == []


def test_progress_stream_counts_up_to_the_total(worker: Worker) -> None:
    sig = batch_map("compute", [add(i) for i in range(5000)], app=worker.app, chunk_size=250, progress=True)
    assert sig.progress_id
    result = sig.delay()
    seen: list[dict[str, Any]] = []
    with Stream.follow(sig.progress_id, app=worker.app, idle_timeout=60) as reader:
        for chunk in reader:
            seen.append(chunk)
    assert len(result.get(timeout=60)) == 5000
    final = seen[-1]
    assert final["is_final"] is True and final["outcome"] == "ok"
    counts = [c["done"] for c in seen if "done" in c]
    assert counts == sorted(counts) and counts[-1] == 5000
    assert all(c["total"] == 5000 for c in seen if "total" in c)
    assert seen[-2]["progress_percent"] == 100.0


def test_progress_stream_ends_with_the_error(worker: Worker) -> None:
    items = [{"operation": "divide", "a": 1, "b": 0 if i == 300 else 1} for i in range(1000)]
    sig = batch_map("compute", items, app=worker.app, chunk_size=100, progress="job-errors-1")
    result = sig.delay()
    with pytest.raises(BatchItemError) as excinfo:
        Stream.follow("job-errors-1", app=worker.app, idle_timeout=60).wait()
    assert excinfo.value.index == 300
    with pytest.raises(BatchItemError):
        result.get(timeout=60)
    settle(result)


def test_a_cancel_from_the_progress_stream_stops_the_map(worker: Worker) -> None:
    before = worker.stats()["pools"]["python"]["requests"]
    sig = batch_map("sleep", [{"seconds": 0.2}] * 200, app=worker.app, chunk_size=20, progress=True)
    result = sig.delay()
    reader = Stream.follow(sig.progress_id, app=worker.app, idle_timeout=60)
    first = next(reader)
    assert first["done"] < 200
    reader.cancel("enough")
    final = reader.wait()
    assert final["outcome"] == "cancelled"
    with pytest.raises(CommandCancelled, match="enough"):
        result.get(timeout=60)
    settle(result)
    stats = worker.wait_for(lambda s: s["pools"]["python"]["busy"] == 0)
    # Far fewer than the 200 sleeps ran: the chunks stopped claiming items.
    assert stats["pools"]["python"]["requests"] - before < 100


def test_a_map_in_a_session_runs_on_the_sessions_bridge(worker: Worker) -> None:
    session_id = f"batch-{uuid.uuid4().hex[:8]}"
    in_session = worker.app.tasks["snakepit.execute_in_session"]
    in_session.delay(session_id, "set_counter", {"value": 1000}).get(timeout=30)
    items = [{"by": 1}] * 50
    sig = batch_map("increment_counter", items, app=worker.app, session_id=session_id, chunk_size=10)
    results = sig.delay().get(timeout=60)
    # Every call saw (and changed) the session's own counter, one call at a time.
    assert sorted(r["value"] for r in results) == list(range(1001, 1051))
    assert in_session.delay(session_id, "get_counter", {}).get(timeout=30)["value"] == 1050


def test_default_chunk_size_comes_from_the_live_workers(worker: Worker) -> None:
    assert pool_capacity(worker.app, "python", refresh=True) == (1, 2)
    assert chunk_size_for(10_000, 1, 2) == 1000  # see tests/unit/test_batch_items.py
    sig = batch_map("ping", [{}] * 10_000, app=worker.app)
    assert len(sig.tasks) == 10

"""Batch bookkeeping without services: claiming order, the reported error, error items, chunk sizes."""

from __future__ import annotations

import json

from celery import Celery

from snakepit_celery import BatchItemError, CommandError, QueueTimeout, item_error
from snakepit_celery.batch import chunk_size_for, error_item, runner
from snakepit_celery.batch.items import Batch


def test_items_are_claimed_in_order_and_results_kept_in_place() -> None:
    batch = Batch(["a", "b", "c"])
    claimed = [batch.claim_slice(1), batch.claim_slice(1), batch.claim_slice(1), batch.claim_slice(1)]
    assert claimed == [range(0, 1), range(1, 2), range(2, 3), None]
    for index in (2, 0, 1):
        batch.finish(index, index * 10)
    assert batch.finished.is_set() and batch.results == [0, 10, 20]


def test_a_failure_stops_claiming_and_the_lowest_failed_index_wins() -> None:
    batch = Batch(list(range(10)), offset=100)
    first, second = batch.claim_slice(1), batch.claim_slice(1)
    assert (first, second) == (range(0, 1), range(1, 2))
    batch.finish(1, exc=CommandError("late", "ValueError"))
    assert batch.claim_slice(1) is None and not batch.finished.is_set()  # item 0 still runs
    batch.finish(0, exc=CommandError("early", "KeyError"))
    assert batch.finished.is_set()
    assert batch.error is not None and (batch.error.index, batch.error.remote_type) == (100, "KeyError")


def test_slices_are_claimed_in_order_and_unrun_items_released() -> None:
    batch = Batch(list(range(10)), offset=20)
    first, second = batch.claim_slice(4), batch.claim_slice(4)
    assert (first, second) == (range(0, 4), range(4, 8))
    batch.finish(4, 4)
    batch.finish(5, exc=CommandError("boom", "ValueError"))  # the slice stopped at its item 5
    batch.unclaim(2)  # its items 6 and 7 never ran
    assert batch.claim_slice(4) is None and not batch.finished.is_set()  # slice 0-3 still runs
    for index in first:
        batch.finish(index, index)
    assert batch.finished.is_set() and batch.error is not None and batch.error.index == 25
    assert runner.slice_size(10_000, 2) == runner.MAX_SLICE
    assert (runner.slice_size(1000, 2), runner.slice_size(20, 2), runner.slice_size(1, 8)) == (125, 3, 1)


def test_return_exceptions_puts_an_error_item_in_place() -> None:
    batch = Batch([1, 2], offset=5, return_exceptions=True)
    assert batch.claim_slice(2) == range(0, 2)
    batch.finish(0, exc=QueueTimeout("no bridge came free"))
    batch.finish(1, "ok")
    assert batch.error is None and batch.results[1] == "ok"
    json.dumps(batch.results)  # JSON as it is
    error = item_error(batch.results[0])
    assert error is not None and error.index == 5 and error.error_class == "QueueTimeout"
    assert error.retryable is True
    assert item_error({"value": 1}) is None and item_error("x") is None


def test_batch_item_error_survives_celerys_json_result_backend() -> None:
    app = Celery("t", backend="cache+memory://", set_as_current=False)
    app.conf.result_serializer = "json"
    sent = BatchItemError("division by zero", 7, "CommandError", "ZeroDivisionError", "Traceback ...")
    meta = json.loads(json.dumps(app.backend.prepare_exception(sent)))
    back = app.backend.exception_to_python(meta)
    assert type(back) is BatchItemError
    assert (back.index, back.error_class, back.remote_type) == (7, "CommandError", "ZeroDivisionError")
    assert str(back) == "item 7: ZeroDivisionError: division by zero" and back.retryable is False
    app.close()


def test_error_item_names_the_class_and_remote_type() -> None:
    item = error_item(CommandError("boom", "RuntimeError", "tb"), 3)
    assert (item["class"], item["type"], item["message"]) == ("CommandError", "RuntimeError", "boom")
    assert item["index"] == 3 and item["traceback"] == "tb" and item["retryable"] is False


def test_default_chunk_sizes() -> None:
    assert chunk_size_for(10_000, 1, 2) == 1000  # at most 1,000 items a chunk
    assert chunk_size_for(1000, 1, 2) == 250  # 4 chunks per worker
    assert chunk_size_for(10_000, 2, 4) == 1000
    assert chunk_size_for(1_000_000, 2, 8) == 5000  # at most 200 chord headers
    assert chunk_size_for(40, 1, 8) == 40  # at least 8 items per bridge of a worker
    assert chunk_size_for(0, 1, 2) == 1

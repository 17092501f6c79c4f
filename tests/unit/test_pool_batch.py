"""``BridgePool.execute_batch`` against real bridges: order, item errors, limits, fallback."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testprocs import missing_service

from snakepit_celery.batch.items import Batch
from snakepit_celery.batch.runner import BatchCall, PoolRunner
from snakepit_celery.engine import pool_batch
from snakepit_celery.engine.pool_batch import ItemResult
from snakepit_celery.errors import (
    BridgeCrashed,
    CommandError,
    CommandTimeout,
    InfrastructureError,
    InvalidArguments,
    UnknownCommand,
)
from tests.handlers import REPO_ROOT, PoolFactory, Recorder

KiB = 1024


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    factory = PoolFactory()
    yield factory
    factory.close()


def divide(a: int, b: int) -> dict[str, object]:
    return {"operation": "divide", "a": a, "b": b}


def test_results_in_order_counted_per_item(make_pool: PoolFactory) -> None:
    recorder = Recorder()
    pool = make_pool(size=1, telemetry=recorder)
    items = [{"n": n, "blob": bytes([n]) * n, "none": None} for n in range(200)]
    results = pool.execute_batch("echo", items)
    assert all(type(r) is ItemResult and r.ok for r in results)
    assert [r.value["echoed"] for r in results] == items
    stats = pool.stats()
    assert stats["requests"] == 200 and stats["bridges"][0]["requests"] == 200
    finished = [e for e in recorder.named("request_finished") if e["command"] == "echo"]
    assert len(finished) == 200 and {e["outcome"] for e in finished} == {"ok"}
    assert pool.execute_batch("echo", []) == []


def test_item_errors_are_mapped_as_execute_maps_them(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1)
    items = [divide(4, 2), divide(1, 0), {"operation": "modulo", "a": 1, "b": 1}, divide(9, 3)]
    results = pool.execute_batch("compute", items)
    assert [r.ok for r in results] == [True, False, False, True]
    assert [results[i].value["result"] for i in (0, 3)] == [2, 3]
    zero = results[1].value
    assert type(zero) is CommandError and zero.remote_type == "ZeroDivisionError" and zero.remote_traceback
    assert type(results[2].value) is InvalidArguments and "modulo" in str(results[2].value)
    assert pool.stats()["errors"] == 2


def test_stop_on_error_ends_the_list_at_the_first_failure(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1)
    pool.execute("set_counter", {"value": 0}, session_id="stop")
    items: list[object] = [{"by": 1}, {"by": 1}, {"by": 1, "bogus": 2}, {"by": 1}]
    results = pool.execute_batch("increment_counter", items, session_id="stop", stop_on_error=True)
    assert [r.ok for r in results] == [True, True, False]
    assert pool.execute("get_counter", {}, session_id="stop") == {"value": 2}
    # An item that cannot be encoded is its own error, before anything is sent.
    results = pool.execute_batch("echo", [{"a": 1}, {"bad": object()}, {"c": 3}])
    assert [r.ok for r in results] == [True, False, True]
    assert type(results[1].value) is InvalidArguments and "object" in str(results[1].value)
    stopped = pool.execute_batch("echo", [{"a": 1}, {"bad": object()}, {"c": 3}], stop_on_error=True)
    assert [r.ok for r in stopped] == [True, False]


def test_a_batch_in_a_session_sees_its_state(make_pool: PoolFactory) -> None:
    pool = make_pool(size=2)
    pool.execute("set_counter", {"value": 100}, session_id="s1")
    results = pool.execute_batch("increment_counter", [{"by": 2}] * 5, session_id="s1")
    assert [r.value["value"] for r in results] == [102, 104, 106, 108, 110]


def test_failures_of_the_whole_call_are_raised(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1)
    with pytest.raises(UnknownCommand, match="no_such"):
        pool.execute_batch("no_such", [{}, {}])
    with pytest.raises(InvalidArguments, match="stream command"):
        pool.execute_batch("ping_stream", [{}])
    pid = pool.stats()["bridges"][0]["pid"]
    with pytest.raises(BridgeCrashed):
        pool.execute_batch("crash", [{}, {}])
    assert pool.execute_batch("ping", [{}])[0].value["pid"] != pid


def test_the_hard_timeout_is_per_item_times_items(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1)
    pid = pool.stats()["bridges"][0]["pid"]
    # Two quick items fit 2 x 0.5 s; a hanging one kills the bridge past 3 x 0.5 s.
    assert [r.ok for r in pool.execute_batch("sleep", [{"seconds": 0.01}] * 2, timeout=0.5)] == [True] * 2
    with pytest.raises(CommandTimeout, match=r"1\.5s"):
        pool.execute_batch("hang", [{"seconds": 60}, {}, {}], timeout=0.5)
    assert pool.execute("ping")["pid"] != pid


def test_big_items_travel_in_several_messages_in_order(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1, max_payload_bytes=1024 * KiB)
    items = [{"i": i, "blob": bytes([i]) * (300 * KiB)} for i in range(10)]
    results = pool.execute_batch("echo", items)
    assert [r.value["echoed"] for r in results] == items
    assert pool.stats()["requests"] == 10


def _old_proto(tmp_path: Path) -> Path:
    """protos/ as it was before ExecuteBatch (for a bridge written before it)."""
    root = tmp_path / "protos"
    shutil.copytree(REPO_ROOT / "protos", root)
    proto = root / "snakepit" / "bridge" / "v1" / "bridge.proto"
    text = proto.read_text()
    old = re.sub(r"\n\s*//[^\n]*\n\s*rpc ExecuteBatch\([^\n]*\n", "\n", text)
    assert "rpc ExecuteBatch" not in old
    proto.write_text(old)
    return root


def test_a_bridge_without_execute_batch_gets_one_execute_per_item(
    make_pool: PoolFactory, tmp_path: Path
) -> None:
    node_dir = REPO_ROOT / "bridges" / "node"
    if shutil.which("node") is None or not (node_dir / "node_modules" / "@grpc" / "grpc-js").is_dir():
        missing_service("the Node.js bridge is not installed (make node-bridge)")
    # The Node.js bridge loads the proto at run time: given the old one, it has no ExecuteBatch.
    pool = make_pool(
        size=1, adapter="node", handler=None, env={"SNAKEPIT_PROTO_DIR": str(_old_proto(tmp_path))}
    )
    items = [divide(6, 3), divide(1, 0), divide(8, 2)]
    for _ in range(2):
        results = pool.execute_batch("compute", items)
        assert [r.ok for r in results] == [True, False, True]
        assert results[0].value["result"] == 2 and results[2].value["result"] == 4
        assert type(results[1].value) is CommandError
        assert len(pool_batch._no_batch) >= 1  # remembered for this bridge
    assert pool.execute_batch("compute", items, stop_on_error=True)[-1].ok is False
    assert pool.stats()["requests"] == 8


class FaultyCall(BatchCall):
    """NOTE: a fault injected on purpose. No real part makes ``run_one`` raise (a failed
    call is its items' error), but a fault there must fail the batch, not hang it."""

    def run_one(self, pool: Any) -> bool:
        raise RuntimeError("injected fault")


class FaultyBatch(Batch):
    """NOTE: a fault injected on purpose (see FaultyCall): recording item 1 fails."""

    def finish(self, index: int, value: Any = None, exc: BaseException | None = None) -> None:
        if index == 1:
            raise RuntimeError("injected fault")
        super().finish(index, value, exc)


def test_a_batch_runner_fault_fails_its_batch_and_the_thread_is_replaced(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1)
    runner = PoolRunner(pool)
    broken = [Batch([divide(1, 1)] * 3), FaultyBatch([divide(1, 1)] * 8)]
    runner.submit(FaultyCall(broken[0], "compute"))
    runner.submit(BatchCall(broken[1], "compute"))  # slices of 2: item 1 ends the first one
    good = Batch([divide(6, 3), divide(8, 2)])
    runner.submit(BatchCall(good, "compute"))
    for batch in (*broken, good):
        assert batch.finished.wait(10.0), "a batch never finished"
    for batch in broken:
        assert type(batch.stop_reason) is InfrastructureError
        assert "batch runner failed: RuntimeError: injected fault" in str(batch.stop_reason)
    assert broken[1].done == 1 and broken[1].results[0]["result"] == 1  # item 0 ran before the fault
    assert good.stop_reason is None and [r["result"] for r in good.results] == [2, 4]
    assert runner._threads == 1  # exact: the failed threads were replaced, none counted twice

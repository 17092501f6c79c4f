"""A unary call cancelled by its request id (what the worker's ``revoke`` does): real bridges.

``wait_cancel`` / ``await_cancel`` (tests/handlers.py) write to a log when the
bridge's handler saw the cancel (``context.cancelled``; an async command's task
cancelled); ``hang`` ignores it, so its bridge must be replaced after
``cancel_grace``; ``wait_file`` holds a bridge so the next call has to queue.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snakepit_celery.engine.cancels import CallCancels, cancel_call
from snakepit_celery.errors import CommandCancelled
from tests.handlers import REPO_ROOT, PoolFactory, wait_until
from tests.testprocs import missing_service

#: How long a cancelled call may take to end, for the caller (the issue's "within a bound").
BOUND = 5.0


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    factory = PoolFactory()
    yield factory
    factory.close()


class Call:
    """``pool.execute`` in a thread; ``outcome()`` its result or error once it ended."""

    def __init__(self, pool: Any, command: str, args: dict[str, Any], request_id: str | None) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                self.result = pool.execute(command, args, request_id=request_id)
            except BaseException as exc:
                self.error = exc
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def outcome(self) -> Any:
        assert self.done.wait(BOUND), "the call did not end"
        self.thread.join()
        return self.error if self.error is not None else self.result


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def only_pid(pool: Any) -> int:
    (bridge,) = pool.stats()["bridges"]
    return int(bridge["pid"])


def idle(pool: Any) -> bool:
    stats = pool.stats()
    return bool(stats["workers"] == stats["size"] and stats["available"] == stats["size"])


@pytest.mark.parametrize("command", ["wait_cancel", "await_cancel"])
def test_a_running_call_is_cancelled_in_its_bridge_which_stays(
    make_pool: PoolFactory, tmp_path: Path, command: str
) -> None:
    pool = make_pool(size=1)
    pid = only_pid(pool)
    log = tmp_path / "log"
    task_id = f"task-{command}"  # a cancel of an id that is over is kept (see the next tests)
    call = Call(pool, command, {"log": str(log), "token": "a"}, task_id)
    wait_until(lambda: "started a" in lines(log), 10, "the command started")
    assert cancel_call(task_id) is True
    error = call.outcome()
    assert type(error) is CommandCancelled and "while it ran" in str(error)
    wait_until(lambda: "cancelled a" in lines(log), BOUND, "the handler saw the cancel")
    wait_until(lambda: idle(pool), BOUND, "the bridge given back")
    assert only_pid(pool) == pid and pool.stats()["restarts"] == 0
    assert pool.execute("ping", {}, request_id="task-b")["message"] == "pong"
    assert cancel_call(task_id) is False  # over: nothing to cancel


def test_a_call_that_ignores_the_cancel_has_its_bridge_replaced(
    make_pool: PoolFactory, tmp_path: Path
) -> None:
    pool = make_pool(size=1, cancel_grace=0.5)
    pid = only_pid(pool)
    log = tmp_path / "log"
    call = Call(pool, "hang", {"seconds": 60, "log": str(log)}, "task-h")
    wait_until(lambda: "hanging" in lines(log), 10, "the command running in its bridge")
    wait_until(lambda: cancel_call("task-h"), 5, "the call cancellable")
    assert type(call.outcome()) is CommandCancelled  # at once, for the caller
    wait_until(lambda: idle(pool) and only_pid(pool) != pid, 10, "the bridge replaced")
    assert pool.stats()["restarts"] == 1
    assert pool.execute("ping", {})["message"] == "pong"


def test_a_call_waiting_for_a_busy_bridge_never_starts(make_pool: PoolFactory, tmp_path: Path) -> None:
    pool = make_pool(size=1)
    log, gate = tmp_path / "log", tmp_path / "gate"
    holder = Call(pool, "wait_file", {"path": str(gate), "token": "holder", "log": str(log)}, None)
    wait_until(lambda: "holder" in lines(log), 10, "the bridge held")
    queued = Call(pool, "record", {"log": str(log), "token": "queued"}, "task-q")
    wait_until(lambda: pool.stats()["queued"] == 1, 10, "the second call queued")
    assert cancel_call("task-q") is True
    error = queued.outcome()
    assert type(error) is CommandCancelled and "never started" in str(error)
    assert pool.stats()["queued"] == 0
    gate.touch()
    assert holder.outcome()["released"] is True
    assert pool.execute("record", {"log": str(log), "token": "after"})["token"] == "after"
    assert lines(log) == ["holder", "after"]  # a queued call would have run before "after"


def test_a_cancel_that_comes_before_its_call_ends_it_at_the_start(
    make_pool: PoolFactory, tmp_path: Path
) -> None:
    pool = make_pool(size=1)
    log = tmp_path / "log"
    assert cancel_call("task-early") is False  # the revoke raced the task's start: kept
    with pytest.raises(CommandCancelled, match="before it started"):
        pool.execute("record", {"log": str(log), "token": "early"}, request_id="task-early")
    assert lines(log) == []
    assert idle(pool) and pool.stats()["requests"] == 0
    pool.execute("record", {"log": str(log), "token": "again"}, request_id="task-early")  # used once
    assert lines(log) == ["again"]


def test_the_early_cancels_kept_are_bounded() -> None:
    registry = CallCancels(remembered=3)
    for n in range(5):
        assert registry.cancel(f"id{n}") is False
    assert registry.enter("id0").cancelled is False  # forgotten: only the last three are kept
    assert registry.enter("id4").cancelled is True


def test_a_node_bridge_call_is_cancelled_and_the_bridge_stays(make_pool: PoolFactory) -> None:
    node_dir = REPO_ROOT / "bridges" / "node"
    if shutil.which("node") is None or not (node_dir / "node_modules" / "@grpc" / "grpc-js").is_dir():
        missing_service("the Node.js bridge is not installed (make node-bridge)")
    pool = make_pool(size=1, adapter="node", handler=None, cancel_grace=2.0)
    pid = only_pid(pool)
    call = Call(pool, "sleep", {"seconds": 60}, "task-n")  # ctx.sleep wakes at the cancel
    wait_until(lambda: pool.stats()["busy"] == 1, 10, "the call on its bridge")
    wait_until(lambda: cancel_call("task-n"), 5, "the call cancellable")
    assert type(call.outcome()) is CommandCancelled
    wait_until(lambda: idle(pool), BOUND, "the bridge given back (it saw the cancel)")
    assert only_pid(pool) == pid and pool.stats()["restarts"] == 0
    assert pool.execute("ping", {})["message"] == "pong"

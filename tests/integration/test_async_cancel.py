"""Cancelling an awaiting ``aexecute`` cancels the command in its bridge: real worker, real bridge.

One worker (threads pool, concurrency 8) with one bridge of the test handler
(tests/handlers.py): ``wait_cancel`` writes to a log when its handler saw the
cancel, ``wait_file`` holds the bridge so the next call waits for it in the
pool's queue, ``record`` proves a call ran. The cancel travels as Celery's
``revoke`` (what ``aexecute`` sends when its coroutine is cancelled), which
the worker's revoke handler extends.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from celery import signals
from itworkers import Worker, WorkerFactory, wait_for

from snakepit_celery import CommandCancelled, aclose_clients, aexecute, aexecute_in_session

POOLS = {"gate": {"size": 1, "queue_timeout": 30.0, "handler": "tests.handlers:TestHandler"}}
#: How long the bridge, and the task's result, may take to show the cancel.
BOUND = 10.0


@pytest.fixture(scope="module")
def worker(module_worker_factory: WorkerFactory) -> Worker:
    repo = str(Path(__file__).resolve().parents[2])  # the bridge imports tests.handlers
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    return module_worker_factory(POOLS, name="cancel", args=("--concurrency", "8"), env={"PYTHONPATH": path})


@contextmanager
def published() -> Iterator[list[str]]:
    """The ids of the tasks sent inside the block, in order."""
    sent: list[str] = []

    def on_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
        sent.append(str((headers or {})["id"]))

    signals.after_task_publish.connect(on_publish, weak=False)
    try:
        yield sent
    finally:
        signals.after_task_publish.disconnect(on_publish)


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def gate_pool(worker: Worker) -> dict[str, Any]:
    return dict(worker.stats()["pools"]["gate"])


def bridge_pids(worker: Worker) -> list[int]:
    return [int(b["pid"]) for b in gate_pool(worker)["bridges"]]


def ended_cancelled(worker: Worker, task_id: str) -> bool:
    """The task's result says it was cancelled: REVOKED, or failed with ``CommandCancelled``."""
    result = worker.app.AsyncResult(task_id)
    if result.state == "REVOKED":
        return True
    return result.state == "FAILURE" and type(result.result) is CommandCancelled


async def cancel_when(call: asyncio.Future[Any], ready: Any) -> None:
    """Cancel ``call`` once ``ready()`` is true; its awaiting ends with ``CancelledError``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND
    while not await asyncio.to_thread(ready):
        assert loop.time() < deadline, "the call did not get where it should be cancelled"
        await asyncio.sleep(0.02)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


def run(main: Any) -> None:
    async def closing() -> None:
        try:
            await main()
        finally:
            await aclose_clients()

    asyncio.run(closing())


def test_cancelling_an_aexecute_cancels_the_command_in_its_bridge(worker: Worker, tmp_path: Path) -> None:
    log = tmp_path / "log"
    before = bridge_pids(worker)
    with published() as sent:

        async def main() -> None:
            args = {"log": str(log), "token": "a"}
            call = asyncio.ensure_future(aexecute("wait_cancel", args, pool="gate", app=worker.app))
            await cancel_when(call, lambda: "started a" in lines(log))

        run(main)
    wait_for(lambda: "cancelled a" in lines(log), BOUND, "the bridge's handler saw the cancel")
    (task_id,) = sent
    wait_for(lambda: ended_cancelled(worker, task_id), BOUND, "the task ended cancelled")
    # The bridge saw the cancel and stays: it serves the next call, same process, same pool size.
    wait_for(lambda: gate_pool(worker)["available"] == 1, BOUND, "the bridge given back")

    async def after() -> Any:
        return await aexecute("ping", {}, pool="gate", app=worker.app, wait=BOUND)

    run(after)
    stats = gate_pool(worker)
    assert bridge_pids(worker) == before and stats["restarts"] == 0 and stats["workers"] == 1


def test_a_cancelled_aexecute_waiting_for_a_busy_bridge_never_starts(worker: Worker, tmp_path: Path) -> None:
    log, gate = tmp_path / "log", tmp_path / "gate"
    holder = worker.execute.apply_async(
        ("wait_file", {"path": str(gate), "token": "holder", "log": str(log)}), {"pool": "gate"}
    )
    wait_for(lambda: lines(log) == ["holder"], BOUND, "the bridge held")
    with published() as sent:

        async def main() -> None:
            args = {"log": str(log), "token": "queued"}
            call = asyncio.ensure_future(aexecute("record", args, pool="gate", app=worker.app))
            await cancel_when(call, lambda: gate_pool(worker)["queued"] == 1)

        run(main)
    (task_id,) = sent
    wait_for(lambda: ended_cancelled(worker, task_id), BOUND, "the waiting call ended cancelled")
    assert gate_pool(worker)["queued"] == 0
    gate.touch()
    assert holder.get(timeout=BOUND)["released"] is True
    after = worker.execute.apply_async(("record", {"log": str(log), "token": "after"}), {"pool": "gate"})
    assert after.get(timeout=BOUND)["token"] == "after"
    assert lines(log) == ["holder", "after"]  # still queued, it would have run before "after"


def test_cancelling_an_aexecute_in_session_cancels_it_and_the_session_goes_on(
    worker: Worker, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    session = f"cancel-{os.getpid()}"

    async def main() -> None:
        await aexecute_in_session(
            session, "set_counter", {"value": 5}, pool="gate", app=worker.app, wait=BOUND
        )
        args = {"log": str(log), "token": "s"}
        call = asyncio.ensure_future(aexecute_in_session(session, "wait_cancel", args, app=worker.app))
        await cancel_when(call, lambda: "started s" in lines(log))

    run(main)
    wait_for(lambda: "cancelled s" in lines(log), BOUND, "the bridge's handler saw the cancel")

    async def after() -> Any:
        return await aexecute_in_session(session, "get_counter", {}, app=worker.app, wait=BOUND)

    with published():
        value: list[Any] = []

        async def read() -> None:
            value.append(await after())

        run(read)
    assert value[0]["value"] == 5  # the same bridge, its state kept


def test_the_sync_revoke_cancels_a_running_call_too(worker: Worker, tmp_path: Path) -> None:
    log = tmp_path / "log"
    result = worker.execute.apply_async(("wait_cancel", {"log": str(log), "token": "r"}), {"pool": "gate"})
    wait_for(lambda: "started r" in lines(log), BOUND, "the command started")
    result.revoke()
    with pytest.raises(CommandCancelled, match="while it ran"):
        result.get(timeout=BOUND)
    wait_for(lambda: "cancelled r" in lines(log), BOUND, "the bridge's handler saw the cancel")

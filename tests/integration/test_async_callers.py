"""``aexecute``, ``aexecute_in_session`` and ``astream`` against a real worker and bridge.

One worker (Redis broker and result backend, this run's private Redis) serves
the module: ``python`` (two bridges) and ``solo`` (one bridge, so the ``info``
probe reads the counters of the bridge that ran a stream). Each test runs its
coroutine in a loop of its own (``run``), which closes the loop's Redis
clients at its end. Every async result is compared with the sync API's.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import numpy
import psutil
import pytest
import redis
from celery import Celery, signals
from celery.exceptions import TimeoutError as CeleryTimeoutError
from itworkers import Worker, WorkerFactory, wait_for

from snakepit_celery import (
    AsyncStream,
    CommandCancelled,
    CommandError,
    CommandTimeout,
    ConfigurationError,
    InvalidSessionId,
    PoolNotFound,
    StreamError,
    UnknownCommand,
    aclose_clients,
    aexecute,
    aexecute_in_session,
    astream,
    stream,
)
from snakepit_celery.api import resolve_redis_url

T = TypeVar("T")
POOLS = {"python": {"size": 2}, "solo": {"size": 1}}


@pytest.fixture(scope="module")
def worker(module_worker_factory: WorkerFactory) -> Worker:
    return module_worker_factory(POOLS, name="aio", args=("--concurrency", "8"))


def run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine in a fresh loop, closing the loop's Redis clients before it ends."""

    async def main() -> T:
        try:
            return await make()
        finally:
            await aclose_clients()

    return asyncio.run(main())


def info(worker: Worker) -> dict[str, Any]:
    return worker.execute.apply_async(("info", {}), {"pool": "solo"}).get(timeout=10)  # type: ignore[no-any-return]


# -- aexecute -----------------------------------------------------------------------------------


def test_aexecute_returns_what_the_sync_get_returns_types_kept(worker: Worker) -> None:
    sent = {"i": 1, "f": 1.5, "t": True, "n": None, "s": "é✓", "l": [1, "a", None], "b": b"\x00\xff\x10"}
    sync = worker.execute.delay("echo", sent).get(timeout=10)["echoed"]
    echoed = run(lambda: aexecute("echo", sent, app=worker.app))["echoed"]
    assert echoed == sync == sent
    assert {k: type(v) for k, v in echoed.items()} == {k: type(v) for k, v in sent.items()}
    computed = run(lambda: aexecute("compute", {"operation": "add", "a": 5, "b": 3}, app=worker.app))
    assert computed["result"] == 8


def test_aexecute_decodes_numpy_arrays_and_big_payloads_by_reference(worker: Worker) -> None:
    array = numpy.arange(12, dtype="<f4").reshape(3, 4)
    big = os.urandom(600 * 1024)  # over the 256 KiB threshold: by reference both ways
    client = redis.Redis.from_url(resolve_redis_url(worker.app))
    try:

        async def both() -> tuple[Any, Any]:
            return await asyncio.gather(
                aexecute("echo", {"a": array}, app=worker.app),
                aexecute("echo", {"data": big}, app=worker.app),
            )

        arrays, payload = run(both)
        got = arrays["echoed"]["a"]
        assert isinstance(got, numpy.ndarray) and got.dtype == array.dtype
        assert numpy.array_equal(got, array)
        assert payload["echoed"]["data"] == big
        # Read once: the result's payload key is gone, as after the sync .get().
        wait_for(lambda: not list(client.scan_iter(f"{worker.prefix}:payload:*")), 10, "payload keys deleted")
    finally:
        client.close()


def test_errors_are_the_sync_classes(worker: Worker) -> None:
    with pytest.raises(UnknownCommand) as sync_error:
        worker.execute.delay("no_such_command", {}).get(timeout=10)
    with pytest.raises(UnknownCommand) as async_error:
        run(lambda: aexecute("no_such_command", {}, app=worker.app))
    assert str(async_error.value) == str(sync_error.value)
    with pytest.raises(CommandError) as raised:
        run(lambda: aexecute("compute", {"operation": "divide", "a": 1, "b": 0}, app=worker.app))
    assert raised.value.remote_type == "ZeroDivisionError"
    with pytest.raises(PoolNotFound, match="did you mean 'python'"):
        run(lambda: aexecute("ping", {}, pool="pyhton", app=worker.app))


def test_timeout_is_the_worker_hard_limit_and_wait_the_caller_bound(worker: Worker) -> None:
    with pytest.raises(CommandTimeout):
        run(lambda: aexecute("sleep", {"seconds": 5}, timeout=0.5, app=worker.app))
    started = time.monotonic()
    with pytest.raises(CeleryTimeoutError):
        run(lambda: aexecute("sleep", {"seconds": 2}, wait=0.3, app=worker.app))
    assert time.monotonic() - started < 2


def test_a_backend_that_is_not_redis_is_refused_naming_the_setting(worker: Worker) -> None:
    app = Celery("aio-rpc", broker=worker.broker, backend="rpc://", set_as_current=False)
    try:
        with pytest.raises(ConfigurationError, match="result_backend"):
            run(lambda: aexecute("ping", {}, app=app))
    finally:
        app.close()


def test_cancelling_the_awaiting_task_revokes_the_call(worker: Worker) -> None:
    # The caller's config has a pool "gpu" that no worker hosts: the call waits in the broker.
    caller = worker.caller_app(["python", "gpu"])
    sent: list[str] = []

    def on_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
        sent.append(str((headers or {})["id"]))

    signals.after_task_publish.connect(on_publish, weak=False)
    try:

        async def cancelled() -> None:
            call = asyncio.ensure_future(aexecute("ping", {}, pool="gpu", app=caller))
            while not sent:
                await asyncio.sleep(0.01)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

        run(cancelled)
        # The live worker hears the revoke and marks the call REVOKED: no worker will run it.
        (task_id,) = sent
        wait_for(lambda: caller.AsyncResult(task_id).state == "REVOKED", 10, "the call revoked")
    finally:
        signals.after_task_publish.disconnect(on_publish)
        caller.close()


def test_many_waiting_calls_use_no_thread_each(worker: Worker) -> None:
    me = psutil.Process()
    gate = threading.Event()
    counts: list[int] = []

    async def many() -> list[Any]:
        calls = [
            asyncio.ensure_future(aexecute("sleep", {"seconds": 0.05}, app=worker.app)) for _ in range(200)
        ]
        while not all(c.done() for c in calls):  # sampled while the calls wait in the worker
            counts.append(me.num_threads())
            await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*calls)

    baseline = me.num_threads()
    results = run(many)
    assert gate.is_set() and len(results) == 200
    assert max(counts) <= baseline + 2, f"threads went from {baseline} to {max(counts)}"


# -- sessions -----------------------------------------------------------------------------------


def test_aexecute_in_session_keeps_the_session_state(worker: Worker) -> None:
    async def counter() -> list[Any]:
        await aexecute_in_session("aio-s1", "set_counter", {"value": 10}, app=worker.app)
        for _ in range(3):
            await aexecute_in_session("aio-s1", "increment_counter", {"by": 2}, app=worker.app)
        return [await aexecute_in_session("aio-s1", "get_counter", {}, app=worker.app)]

    (final,) = run(counter)
    sync = worker.app.tasks["snakepit.execute_in_session"].delay("aio-s1", "get_counter", {}).get(timeout=10)
    assert final == sync
    assert final["value"] == 16
    with pytest.raises(InvalidSessionId):
        run(lambda: aexecute_in_session("no spaces", "get_counter", {}, app=worker.app))


# -- astream ------------------------------------------------------------------------------------


def test_astream_gives_the_sync_stream_chunks_in_order(worker: Worker) -> None:
    args = {"count": 500, "interval": 0}
    with stream("ping_stream", args, app=worker.app) as s:
        sync = list(s)

    async def read() -> tuple[list[Any], str | None]:
        async with astream("ping_stream", args, app=worker.app) as s:
            return [chunk async for chunk in s], s.outcome

    chunks, outcome = run(read)
    assert [c["seq"] for c in chunks] == [c["seq"] for c in sync] == list(range(500))
    assert [c["is_final"] for c in chunks].count(True) == 1 and outcome == "ok"
    assert chunks[-1].keys() == sync[-1].keys()


def test_astream_replays_for_a_follower_after_a_position(worker: Worker) -> None:
    async def replay() -> tuple[list[int], list[int]]:
        async with astream("ping_stream", {"count": 40, "interval": 0.005}, app=worker.app) as s:
            first = [chunk["seq"] async for chunk in s]
        async with AsyncStream.follow(s.task_id, app=worker.app, after=29) as late:
            rest = [chunk["seq"] async for chunk in late]
        return first, rest

    first, rest = run(replay)
    assert first == list(range(40))
    assert rest == list(range(30, 40))


def test_astream_raises_the_command_error_after_the_chunks_before_it(worker: Worker) -> None:
    got: list[int] = []

    async def read() -> None:
        args = {"lines": ["INFO a", "ERROR b", 7, "INFO c"]}
        async with astream("tail_and_analyze", args, app=worker.app) as s:
            async for chunk in s:
                got.append(chunk["line_number"])

    with pytest.raises(CommandError) as raised:
        run(read)
    assert got == [1, 2] and raised.value.remote_type == "TypeError"


def test_cancelling_the_awaiting_task_stops_the_bridge_generator(worker: Worker) -> None:
    before = info(worker)["streams_cancelled"]
    seen: list[int] = []

    async def reader() -> None:
        async with astream("ping_stream", {"count": 0, "interval": 0.01}, pool="solo", app=worker.app) as s:
            async for chunk in s:
                seen.append(chunk["seq"])

    async def cancel_it() -> None:
        task = asyncio.ensure_future(reader())
        while len(seen) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancel_it)
    # The stream's bridge is the pool's only one: `info` runs on it once the stream let it go.
    wait_for(lambda: info(worker)["streams_cancelled"] > before, 10, "the bridge generator stopped")


def test_a_stream_revoked_by_someone_else_raises_command_cancelled(worker: Worker) -> None:
    async def read() -> None:
        async with astream("ping_stream", {"count": 0, "interval": 0.01}, app=worker.app) as s:
            async for chunk in s:
                if chunk["seq"] == 2:
                    worker.app.control.revoke(s.task_id)

    with pytest.raises(CommandCancelled, match="revoked"):
        run(read)


def test_astream_to_an_unknown_pool_is_refused_when_entering(worker: Worker) -> None:
    async def read() -> None:
        async with astream("ping_stream", {"count": 1}, pool="pyhton", app=worker.app):
            pass

    with pytest.raises(PoolNotFound, match="did you mean 'python'"):
        run(read)


def test_an_astream_no_worker_hosts_ends_and_one_revoked_in_the_broker_is_cancelled(worker: Worker) -> None:
    caller = worker.caller_app(["python", "gpu"])  # "gpu": configured here, hosted by no worker
    try:

        async def unhosted() -> None:
            async with astream("ping_stream", {"count": 3}, pool="gpu", app=caller) as s:
                async for _ in s:
                    pass

        with pytest.raises(StreamError, match="no live worker hosts pool 'gpu'"):
            run(unhosted)

        async def revoked() -> None:
            async with astream("ping_stream", {"count": 3}, pool="gpu", app=caller) as s:
                caller.control.revoke(s.task_id)
                async for _ in s:
                    pass

        with pytest.raises(CommandCancelled, match="revoked"):
            run(revoked)
    finally:
        caller.close()


def test_results_arrive_after_the_pubsub_connection_is_killed(worker: Worker) -> None:
    from snakepit_celery.aio.results import waiter_for

    admin = redis.Redis.from_url(worker.app.conf.result_backend)

    async def killed() -> list[Any]:
        calls = [
            asyncio.ensure_future(aexecute("sleep", {"seconds": 0.3}, app=worker.app)) for _ in range(10)
        ]
        pubsub = waiter_for(worker.app)._pubsub
        while pubsub.connection is None or not pubsub.connection.is_connected:
            await asyncio.sleep(0.01)
        host, port = pubsub.connection._writer.get_extra_info("sockname")[:2]
        # Redis drops the waiter's pub/sub connection while every call still waits for its result.
        assert admin.client_kill(f"{host}:{port}")
        return await asyncio.wait_for(asyncio.gather(*calls), 30)

    try:
        results = run(killed)
    finally:
        admin.close()
    assert len(results) == 10 and all(r["slept"] >= 0.3 and not r["cancelled"] for r in results)

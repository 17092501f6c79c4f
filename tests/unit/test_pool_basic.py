"""The pool against real bridges: values, payload limits, errors, sessions, streams, stats."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from snakepit_celery.errors import (
    CommandError,
    InvalidArguments,
    PayloadTooLarge,
    PoolClosed,
    UnknownCommand,
    WorkerLost,
)
from tests.handlers import PoolFactory, Recorder, wait_until

MiB = 1024 * 1024


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    factory = PoolFactory()
    yield factory
    factory.close()


def test_types_round_trip_through_the_pool(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1)
    value = {
        "int": 7,
        "big": 2**62,
        "float": 1.5,
        "whole_float": 2.0,
        "none": None,
        "true": True,
        "false": False,
        "nested": [1, [2.5, None, {"k": [True, "x"]}], {}],
        "unicode": "snake 🐍 ünïcödé",
        "bytes": b"\x00\xffraw",
        "bytes_in_list": [b"", b"\x01"],
        "marker_lookalike": {"__snakepit_bytes__": 0},
    }
    echoed = pool.execute("echo", value)["echoed"]
    assert echoed == value
    assert type(echoed["int"]) is int and type(echoed["whole_float"]) is float
    assert type(echoed["bytes"]) is bytes and echoed["none"] is None
    assert pool.execute("echo", None) == {"echoed": {}}  # no arguments: an empty object


def test_ten_megabytes_pass_and_over_the_limit_is_refused_by_name(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1, max_payload_bytes=16 * MiB)
    blob = bytes(range(256)) * (10 * MiB // 256)
    assert pool.execute("echo", {"data": blob})["echoed"]["data"] == blob
    text = "x" * (10 * MiB)
    assert pool.execute("echo", {"text": text})["echoed"]["text"] == text

    with pytest.raises(PayloadTooLarge) as caught:
        pool.execute("echo", {"data": b"\x00" * (17 * MiB)})
    message = str(caught.value)
    assert str(16 * MiB) in message and "max_payload_bytes" in message
    assert str(17 * MiB + len('{"data":{"__snakepit_bytes__":0}}')) in message
    # Nothing was sent: the bridge is the same and still serves.
    assert pool.stats()["restarts"] == 0
    assert pool.execute("ping")["status"] == "ok"


def test_result_over_the_limit_is_a_clear_error_and_the_bridge_survives(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1, max_payload_bytes=1 * MiB)
    pid = pool.execute("info")["pid"]
    # A reply is bigger than the request that asked for it: "random"-free way is echo
    # of a value right under the limit, whose reply adds the {"echoed": ...} envelope.
    with pytest.raises(PayloadTooLarge):
        pool.execute("echo", {"data": "y" * (MiB - 20)})
    assert pool.execute("info")["pid"] == pid


def test_remote_errors_map_to_classes_and_never_take_the_bridge_down(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1)
    pid = pool.execute("info")["pid"]

    with pytest.raises(UnknownCommand) as unknown:
        pool.execute("no_such_command", {})
    assert "no_such_command" in str(unknown.value) and "ping" in str(unknown.value)

    with pytest.raises(CommandError) as failed:
        pool.execute("compute", {"operation": "divide", "a": 1, "b": 0})
    assert failed.value.remote_type == "ZeroDivisionError"
    assert "Traceback" in failed.value.remote_traceback

    with pytest.raises(InvalidArguments):
        pool.execute("compute", {"operation": "add", "a": 1, "b": 2, "bogus": 3})
    with pytest.raises(InvalidArguments):
        pool.execute("echo", [1, 2])  # arguments must be an object
    with pytest.raises(InvalidArguments) as not_json:
        pool.execute("echo", {"s": {1, 2}})
    assert "set" in str(not_json.value)

    assert pool.execute("info")["pid"] == pid
    stats = pool.stats()
    assert stats["restarts"] == 0 and stats["workers"] == 1


def test_stats_agree_with_what_was_done(make_pool: PoolFactory) -> None:
    recorder = Recorder()
    pool = make_pool(size=2, telemetry=recorder)
    for _ in range(5):
        pool.execute("ping")
    with pytest.raises(CommandError):
        pool.execute("compute", {"operation": "divide", "a": 1, "b": 0})
    with pytest.raises(UnknownCommand):
        pool.execute("nope")

    stats = pool.stats()
    assert stats["name"] == "test" and stats["language"] == "python" and stats["size"] == 2
    assert stats["workers"] == 2 and stats["available"] == 2 and stats["busy"] == 0
    assert stats["requests"] == 7 and stats["errors"] == 2
    assert stats["queued"] == 0 and stats["queue_timeouts"] == 0 and stats["pool_saturated"] == 0
    assert stats["restarts"] == 0
    assert sum(b["requests"] for b in stats["bridges"]) == 7
    for bridge in stats["bridges"]:
        assert bridge["state"] == "idle" and bridge["rss_bytes"] > 1_000_000 and bridge["uptime"] >= 0

    started = recorder.named("bridge_started")
    assert sorted(e["pid"] for e in started) == sorted(b["pid"] for b in stats["bridges"])
    assert all(0 < e["startup_time"] < 20 for e in started)
    outcomes = [e["outcome"] for e in recorder.named("request_finished")]
    assert outcomes == ["ok"] * 5 + ["error", "error"]
    assert all(e["duration"] >= 0 and e["pool"] == "test" for e in recorder.named("request_finished"))


def test_a_call_refused_before_its_bridge_is_no_request_and_its_after_hook_runs_once(
    make_pool: PoolFactory,
) -> None:
    recorder = Recorder()
    pool = make_pool(size=1, telemetry=recorder)
    ended: list[str] = []

    def refuse() -> None:
        raise WorkerLost("refused by the task layer", "w1")

    with pytest.raises(WorkerLost):
        pool.execute("ping", on_begin=refuse)
    assert pool.execute("ping", on_begin=lambda: lambda: ended.append("after"))["pid"] > 0
    assert ended == ["after"]
    stats = pool.stats()
    assert stats["requests"] == 1 and stats["errors"] == 0 and stats["available"] == 1
    assert [e["outcome"] for e in recorder.named("request_finished")] == ["ok"]


def test_sessions_are_pinned_and_reinitialised(make_pool: PoolFactory) -> None:
    loaded: list[str] = []

    def loader(session_id: str) -> dict[str, Any] | None:
        loaded.append(session_id)
        return {"counter": 40} if session_id == "stored" else None

    pool = make_pool(size=2, session_loader=loader)
    pool.execute("set_counter", {"value": 5}, session_id="a")
    pool.execute("set_counter", {"value": 9}, session_id="b")
    for _ in range(3):
        pool.execute("increment_counter", {}, session_id="a")
    assert pool.execute("get_counter", {}, session_id="a")["value"] == 8
    assert pool.execute("get_counter", {}, session_id="b")["value"] == 9
    assert pool.execute("increment_counter", {"by": 2}, session_id="stored")["value"] == 42
    sessions = pool.sessions()
    assert set(sessions) == {"a", "b", "stored"}
    assert sessions["a"] != sessions["b"]  # bound to the slot with the fewest sessions
    assert pool.execute("info", {}, session_id="a")["pid"] == sessions["a"]
    assert loaded == ["a", "b", "stored"]
    assert sorted(b["sessions"] for b in pool.stats()["bridges"]) == [1, 2]

    # The session's bridge is replaced: the next call runs InitSession on the new one.
    old = sessions["a"]
    new_pids = pool.restart_bridge(old)
    assert len(new_pids) == 1 and new_pids[0] != old
    assert pool.execute("get_counter", {}, session_id="a")["value"] == 0
    assert pool.sessions()["a"] == new_pids[0]
    assert loaded == ["a", "b", "stored", "a"]

    assert pool.end_session("a") is True
    assert "a" not in pool.sessions()
    assert pool.end_session("a") is False


def test_stream_delivers_chunk_lists_and_cancels(make_pool: PoolFactory) -> None:
    recorder = Recorder()
    pool = make_pool(size=1, telemetry=recorder)
    with pool.stream("ping_stream", {"count": 5, "interval": 0.0}) as stream:
        chunks = [chunk for batch in stream for chunk in batch]
    assert [c["seq"] for c in chunks] == [0, 1, 2, 3, 4]
    assert chunks[-1]["is_final"] is True
    assert recorder.named("stream_chunks")[-1]["count"] == 5

    with pool.stream("ping_stream", {"count": 0, "interval": 0.01}) as endless:
        first = next(endless)
        assert first
    # Leaving the block cancelled it on the bridge; the bridge comes back once its
    # generator has stopped (tests/unit/test_pool_cancel.py).
    wait_until(lambda: pool.stats()["available"] == 1, 5.0, "the bridge is given back")
    stats = pool.stats()
    assert stats["available"] == 1 and stats["busy"] == 0 and stats["restarts"] == 0
    assert recorder.named("request_finished")[-1]["outcome"] == "cancelled"
    assert pool.execute("ping")["status"] == "ok"


def test_drain_and_close_refuse_new_calls(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1)
    pool.execute("ping")
    assert pool.drain(5.0) is True
    with pytest.raises(PoolClosed):
        pool.execute("ping")
    pool.close(1.0)
    with pytest.raises(PoolClosed):
        pool.execute("ping")
    assert pool.stats()["workers"] == 0

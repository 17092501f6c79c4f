"""The stream relay protocol against this run's private Redis: no Celery, no bridge.

The relay reads from an :class:`IterableSource` (the library's own source for
chunks produced in-process), so these tests exercise the real relay and the
real reader over real Redis; the bridge side is covered in tests/integration.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from snakepit_celery.errors import CommandCancelled, CommandError, StreamError
from snakepit_celery.streaming import IterableSource, RelaySettings, Stream, StreamKeys, StreamRelay
from snakepit_celery.streaming.client import READ_COUNT


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def relay_in_thread(relay: StreamRelay, source: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        box["outcome"] = relay.run(lambda: source)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def data_chunks(stream: Stream) -> tuple[list[Any], dict[str, Any]]:
    chunks = list(stream)
    assert chunks[-1]["is_final"] is True
    return chunks[:-1], chunks[-1]


def test_ten_thousand_chunks_arrive_in_order_once_each(client: redis.Redis) -> None:
    reader = Stream(client, "t-order")  # subscribed before the relay writes anything
    relay = StreamRelay(client, "t-order")
    thread, box = relay_in_thread(relay, IterableSource({"i": i, "pad": "x" * 100} for i in range(10_000)))
    chunks, final = data_chunks(reader)
    thread.join(10)
    assert [c["i"] for c in chunks] == list(range(10_000))
    assert final == {"is_final": True, "outcome": "ok", "chunks": 10_000}
    assert box["outcome"].status == "ok"
    assert reader.last_seq == 9_999


def test_fast_chunks_are_coalesced_into_few_entries(client: redis.Redis) -> None:
    relay = StreamRelay(client, "t-coalesce")
    outcome = relay.run(lambda: IterableSource({"i": i} for i in range(5_000)))
    assert outcome.chunks == 5_000
    entries = client.xlen(StreamKeys.for_task("t-coalesce").data)
    assert entries <= 5_000 / 4, f"{entries} Redis entries for 5000 chunks: not coalesced"


def test_a_lone_chunk_is_not_held_back_for_a_batch(client: redis.Redis) -> None:
    release = threading.Event()

    def slow() -> Iterator[dict[str, int]]:
        yield {"n": 1}
        release.wait(10)  # the source stalls after one chunk
        yield {"n": 2}

    reader = Stream(client, "t-lone", block=0.1)
    thread, _ = relay_in_thread(StreamRelay(client, "t-lone"), IterableSource(slow()))
    try:
        assert next(reader) == {"n": 1}  # arrives while the source is still stalled
        assert not release.is_set()
    finally:
        release.set()
    assert [c.get("n") for c in reader] == [2, None]
    thread.join(10)


def test_late_reader_gets_every_chunk_from_the_buffer(client: redis.Redis) -> None:
    StreamRelay(client, "t-late").run(lambda: IterableSource({"i": i} for i in range(50)))
    chunks, final = data_chunks(Stream(client, "t-late"))
    assert [c["i"] for c in chunks] == list(range(50))
    assert final["chunks"] == 50


def test_reader_joining_midway_and_resuming_gets_no_gap_and_no_duplicate(client: redis.Redis) -> None:
    gate = threading.Event()

    def gated() -> Iterator[dict[str, int]]:
        for i in range(200):
            if i == 100:
                gate.wait(10)
            yield {"i": i}

    thread, _ = relay_in_thread(StreamRelay(client, "t-mid"), IterableSource(gated()))
    first = Stream(client, "t-mid")
    seen = [next(first)["i"] for _ in range(100)]  # chunks 0..99, written before the gate
    gate.set()
    # A second reader resumes after the last sequence number the first one saw.
    resumed, final = data_chunks(Stream(client, "t-mid", after=first.last_seq))
    thread.join(10)
    assert seen + [c["i"] for c in resumed] == list(range(200))
    assert final["chunks"] == 200


def test_error_mid_stream_reaches_the_reader_after_the_chunks_before_it(client: redis.Redis) -> None:
    def failing() -> Iterator[dict[str, int]]:
        yield from ({"i": i} for i in range(7))
        raise CommandError("bad row 7", "ValueError", "Traceback ...")

    outcome = StreamRelay(client, "t-err").run(lambda: IterableSource(failing()))
    assert outcome.status == "error"
    finals: list[dict[str, Any]] = []
    reader = Stream(client, "t-err", on_chunk=lambda c: finals.append(c) if c.get("is_final") else None)
    got = []
    with pytest.raises(CommandError) as info:
        for chunk in reader:
            got.append(chunk["i"])
    assert got == list(range(7))
    assert info.value.remote_type == "ValueError"
    assert info.value.message == "bad row 7"
    assert reader.outcome == "error"
    assert finals == [
        {
            "is_final": True,
            "outcome": "error",
            "chunks": 7,
            "error": {"type": "ValueError", "message": "bad row 7", "class": "CommandError"},
        }
    ]


def test_cancel_reaches_the_source_quickly(client: redis.Redis) -> None:
    stop_seen = threading.Event()

    def endless() -> Iterator[dict[str, int]]:
        i = 0
        try:
            while True:
                yield {"i": i}
                i += 1
                time.sleep(0.001)
        finally:
            stop_seen.set()

    thread, box = relay_in_thread(StreamRelay(client, "t-cancel"), IterableSource(endless()))
    with Stream(client, "t-cancel") as reader:
        assert next(reader)["i"] == 0
        started = time.monotonic()
        reader.cancel()
        assert stop_seen.wait(2)
        assert time.monotonic() - started < 0.2
        rest = list(reader)
    thread.join(5)
    assert rest[-1]["outcome"] == "cancelled"
    assert [c["i"] for c in rest[:-1]] == list(range(1, len(rest)))
    assert box["outcome"].status == "cancelled"


def test_cancel_before_start_never_opens_the_source(client: redis.Redis) -> None:
    reader = Stream(client, "t-early")
    reader.cancel("user closed the page")
    opened = []
    outcome = StreamRelay(client, "t-early").run(lambda: opened.append(1) or IterableSource([]))  # type: ignore[func-returns-value]
    assert opened == []
    assert outcome.status == "cancelled" and outcome.reason == "user closed the page"
    assert list(reader) == [
        {"is_final": True, "outcome": "cancelled", "chunks": 0, "reason": "user closed the page"}
    ]


def test_leaving_the_block_cancels_and_a_revoke_raises_for_other_readers(client: redis.Redis) -> None:
    revoked = threading.Event()

    def endless() -> Iterator[dict[str, int]]:
        while True:
            yield {"x": 1}
            time.sleep(0.005)

    relay = StreamRelay(client, "t-revoke", revoked=revoked.is_set)
    thread, box = relay_in_thread(relay, IterableSource(endless()))
    other = Stream(client, "t-revoke")
    next(other)
    revoked.set()
    with pytest.raises(CommandCancelled, match="revoked"):
        list(other)
    thread.join(5)
    assert box["outcome"].status == "cancelled"

    thread, box = relay_in_thread(StreamRelay(client, "t-exit"), IterableSource(endless()))
    with Stream(client, "t-exit") as reader:
        next(reader)
    thread.join(5)
    assert box["outcome"].status == "cancelled"
    assert box["outcome"].reason == "the caller left the stream's block"


def test_reader_behind_the_buffer_gets_stream_error_not_silent_loss(client: redis.Redis) -> None:
    settings = RelaySettings(buffer_chunks=200, entry_chunks=10)
    StreamRelay(client, "t-slow", settings=settings).run(
        lambda: IterableSource({"i": i} for i in range(5_000))
    )
    # The buffer is bounded in Redis (approximate trimming keeps whole nodes).
    assert client.xlen(StreamKeys.for_task("t-slow").data) < 5_000 / 10
    with pytest.raises(StreamError, match="fell behind"):
        list(Stream(client, "t-slow"))
    skipping = Stream(client, "t-slow", skip_missed=True)
    chunks, final = data_chunks(skipping)
    assert skipping.missed > 0
    assert [c["i"] for c in chunks] == list(range(skipping.missed, 5_000))
    assert final["chunks"] == 5_000


def test_binary_values_round_trip(client: redis.Redis) -> None:
    values: list[Any] = [
        {"blob": b"\x00\xff" * 10},
        {"n": 1},
        {"two": [b"a", b"b"]},
        {"__snakepit_bytes__": 3},
    ]
    StreamRelay(client, "t-bytes").run(lambda: IterableSource(values))
    chunks, _ = data_chunks(Stream(client, "t-bytes"))
    assert chunks == values


def test_reader_reports_a_relay_that_died_without_a_final_chunk(client: redis.Redis, redis_url: str) -> None:
    script = textwrap.dedent(
        f"""
        import itertools, time, redis
        from snakepit_celery.streaming import IterableSource, RelaySettings, StreamRelay
        def chunks():
            for i in itertools.count():
                yield {{"i": i}}
                time.sleep(0.01)
        client = redis.Redis.from_url({redis_url!r})
        relay = StreamRelay(client, "t-dead", settings=RelaySettings(heartbeat_ttl=1))
        relay.run(lambda: IterableSource(chunks()))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        reader = Stream(client, "t-dead", block=0.2)
        assert next(reader)["i"] == 0
        proc.kill()
        with pytest.raises(StreamError, match="stopped relaying"):
            list(reader)
    finally:
        proc.kill()
        proc.wait(5)


def test_idle_timeout_on_a_stream_that_never_starts(client: redis.Redis) -> None:
    with pytest.raises(StreamError, match="no chunk for"):
        list(Stream(client, "t-never", block=0.1, idle_timeout=0.3))


def test_bad_task_id_is_refused_by_name(client: redis.Redis) -> None:
    with pytest.raises(StreamError, match="invalid stream task id"):
        Stream(client, "../etc passwd")


def test_a_chunk_the_command_marked_final_is_the_one_final_chunk(client: redis.Redis) -> None:
    values = [{"i": 0, "is_final": False}, {"i": 1, "is_final": True}]
    StreamRelay(client, "t-own-final").run(lambda: IterableSource(values))
    seen: list[dict[str, Any]] = []
    reader = Stream(client, "t-own-final", on_chunk=seen.append)
    assert list(reader) == [{"i": 0, "is_final": False}, {"i": 1, "is_final": True, "outcome": "ok"}]
    assert seen == list(Stream(client, "t-own-final"))
    assert reader.result == {"i": 1, "is_final": True, "outcome": "ok"}
    assert reader.outcome == "ok"


def test_a_pacing_reader_holds_the_relay_back_and_loses_nothing(client: redis.Redis) -> None:
    settings = RelaySettings(buffer_chunks=300, reader_lead=100, entry_chunks=10, flush_chunks=20)
    produced: list[int] = []

    def counted() -> Iterator[dict[str, int]]:
        for i in range(3_000):
            produced.append(i)
            yield {"i": i}

    pacer = Stream(client, "t-pace", pace=True)
    follower = Stream(client, "t-pace")  # reads just as slowly, but does not pace
    thread, box = relay_in_thread(StreamRelay(client, "t-pace", settings=settings), IterableSource(counted()))
    got = []
    lead = 0
    for chunk in pacer:
        if chunk.get("is_final"):
            break
        got.append(chunk["i"])
        lead = max(lead, len(produced) - len(got))
        if len(got) % 100 == 0:
            time.sleep(0.01)  # a slow consumer (the work it does per chunk), not a wait for a condition
    thread.join(10)
    assert got == list(range(3_000))
    assert box["outcome"].status == "ok"
    # Ahead by at most the lead, plus one flush's overshoot, the relay's read-ahead (one chunk a
    # message here) and what the reader fetched but has not handed out yet (one XREAD).
    bound = (
        settings.reader_lead
        + settings.flush_chunks
        + settings.read_ahead
        + READ_COUNT * settings.entry_chunks
    )
    assert lead <= bound < 3_000 // 2, (lead, bound)
    with pytest.raises(StreamError, match="fell behind"):
        for _ in follower:
            time.sleep(0.0005)


def test_closing_a_pacing_reader_releases_the_relay(client: redis.Redis) -> None:
    settings = RelaySettings(buffer_chunks=300, reader_lead=100)
    pacer = Stream(client, "t-pace-close", pace=True)
    thread, box = relay_in_thread(
        StreamRelay(client, "t-pace-close", settings=settings), IterableSource({"i": i} for i in range(2_000))
    )
    assert next(pacer)["i"] == 0
    pacer.close()  # stops reading without cancelling: the relay must run on to the end
    thread.join(10)
    assert box["outcome"].status == "ok" and box["outcome"].chunks == 2_000

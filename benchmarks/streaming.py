"""Streaming throughput and first-chunk latency, beside raw Redis pub/sub in the same run.

    .venv/bin/python benchmarks/streaming.py [--chunks 50000] [--size 1024]

Rows:
* raw pub/sub: one process PUBLISHes ``--chunks`` messages of ``--size`` bytes,
  pipelined 64 at a time; this process SUBSCRIBEs and counts them;
* raw XADD/XREAD: the same through a Redis Stream (what the relay uses);
* snakepit stream: ``stream("payload_stream")`` end to end: bridge (gRPC) ->
  worker relay -> Redis -> this process, chunks of the same size;
* first chunk: a one-chunk stream, from the relay's start on the worker to the
  chunk in the caller's hands (and from ``stream()`` being called).

Everything runs on this machine: an embedded Redis, one worker subprocess.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from snakepit_celery.api import create_app
from snakepit_celery.config import SnakepitConfig
from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.integration.workerproc import WorkerProcess
from snakepit_celery.streaming import stream

HANDLERS = Path(__file__).resolve().parent / "handlers"
PIPELINE = 64


def _publisher(
    url: str, channel: str, count: int, size: int, ready: multiprocessing.synchronize.Event
) -> None:
    client = redis.Redis.from_url(url)
    payload = b"x" * size
    ready.wait(30)
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.publish(channel, payload)
        if (i + 1) % PIPELINE == 0:
            pipe.execute()
    pipe.execute()


def raw_pubsub(url: str, count: int, size: int) -> float:
    """Messages/s from a pipelined publisher process to a subscriber here."""
    client = redis.Redis.from_url(url)
    channel = f"bench-{uuid.uuid4().hex}"
    sub = client.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(channel)
    while sub.get_message(timeout=1) is None and not sub.subscribed:
        pass
    ready = multiprocessing.Event()
    proc = multiprocessing.Process(target=_publisher, args=(url, channel, count, size, ready))
    proc.start()
    received = 0
    ready.set()
    started = time.perf_counter()
    while received < count:
        message = sub.get_message(timeout=10)
        if message is None:
            break
        received += 1
    elapsed = time.perf_counter() - started
    proc.join()
    sub.close()
    if received < count:
        print(f"  raw pub/sub lost {count - received} of {count} messages", file=sys.stderr)
    return received / elapsed


def _xadder(url: str, key: str, count: int, size: int, ready: multiprocessing.synchronize.Event) -> None:
    client = redis.Redis.from_url(url)
    payload = b"x" * size
    ready.wait(30)
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.xadd(key, {b"j": payload}, id=f"{i + 1}-0")
        if (i + 1) % PIPELINE == 0:
            pipe.execute()
    pipe.execute()


def raw_streams(url: str, count: int, size: int) -> float:
    """Entries/s through a Redis Stream: pipelined XADD in a process, XREAD BLOCK here."""
    client = redis.Redis.from_url(url)
    key = f"bench-{uuid.uuid4().hex}"
    ready = multiprocessing.Event()
    proc = multiprocessing.Process(target=_xadder, args=(url, key, count, size, ready))
    proc.start()
    received = 0
    last = "0-0"
    ready.set()
    started = time.perf_counter()
    while received < count:
        reply = client.xread({key: last}, count=512, block=10_000)
        if not reply:
            break
        entries = reply[0][1]
        received += len(entries)
        last = entries[-1][0]
    elapsed = time.perf_counter() - started
    proc.join()
    client.delete(key)
    return received / elapsed


def snakepit_stream(app: object, count: int, size: int) -> tuple[float, float]:
    """(chunks/s from the relay's start to the last chunk, chunks/s from the call)."""
    called = time.time()
    with stream("payload_stream", {"count": count, "size": size}, app=app) as s:  # type: ignore[arg-type]
        received = sum(1 for chunk in s if "i" in chunk)
        ended = time.time()
    assert received == count, f"got {received} of {count} chunks"
    assert s.started_at is not None
    return count / (ended - s.started_at), count / (ended - called)


def first_chunk(app: object, rounds: int) -> tuple[list[float], list[float]]:
    """Milliseconds to the first chunk: from the relay's start, and from the call."""
    after_start, after_call = [], []
    for _ in range(rounds):
        called = time.time()
        with stream("ping_stream", {"count": 1}, app=app) as s:  # type: ignore[arg-type]
            next(s)
            got = time.time()
        assert s.started_at is not None
        after_start.append((got - s.started_at) * 1000)
        after_call.append((got - called) * 1000)
    return after_start, after_call


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=30, help="one-chunk streams for the latency row")
    ns = parser.parse_args()

    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as tmp:
        url = server.url(0)
        config_file = Path(tmp) / "bench.toml"
        config_file.write_text(
            "[pools.python]\n"
            "size = 2\n"
            'handler = "stream_handler:BenchHandler"\n'
            f'env = {{ PYTHONPATH = "{HANDLERS}" }}\n'
        )
        prefix = f"bench-{uuid.uuid4().hex[:6]}"
        env = {
            "SNAKEPIT_CONFIG": str(config_file),
            "SNAKEPIT_BROKER_URL": url,
            "SNAKEPIT_RESULT_BACKEND": server.url(1),
            "SNAKEPIT_REDIS_URL": url,
            "SNAKEPIT_QUEUE_PREFIX": prefix,
        }
        config = SnakepitConfig.from_env(env)
        app = create_app(config, main=prefix)
        hostname = f"{prefix}@{socket.gethostname()}"
        argv = [
            sys.executable,
            "-m",
            "snakepit_celery.cli",
            "worker",
            "-n",
            hostname,
            "--loglevel",
            "WARNING",
        ]
        with WorkerProcess(argv=argv, env=env) as worker:
            worker.wait_ready(app, hostname)
            snakepit_stream(app, 2_000, ns.size)  # warm up: imports, connections
            first_chunk(app, 3)

            pubsub = raw_pubsub(url, ns.chunks, ns.size)
            xread = raw_streams(url, ns.chunks, ns.size)
            from_start, from_call = snakepit_stream(app, ns.chunks, ns.size)
            pubsub_again = raw_pubsub(url, ns.chunks, ns.size)
            after_start, after_call = first_chunk(app, ns.rounds)
        app.close()

    raw = statistics.mean([pubsub, pubsub_again])
    print(f"\nstreaming, {ns.chunks} chunks of {ns.size} B, {os.cpu_count()} CPUs\n")
    rows = [
        ("raw Redis pub/sub, pipelined 64 (mean of 2)", f"{raw:,.0f}/s", "1.00"),
        ("raw Redis XADD pipelined 64 / XREAD BLOCK", f"{xread:,.0f}/s", f"{xread / raw:.2f}"),
        (
            "snakepit stream, bridge -> worker -> Redis -> caller",
            f"{from_start:,.0f}/s",
            f"{from_start / raw:.2f}",
        ),
        ("  same, counted from the stream() call", f"{from_call:,.0f}/s", f"{from_call / raw:.2f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'path':<{width}}  {'chunks/s':>12}  {'vs raw':>6}")
    for name, rate, ratio in rows:
        print(f"{name:<{width}}  {rate:>12}  {ratio:>6}")

    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))]

    print(f"\nfirst chunk, {ns.rounds} one-chunk streams (ms)   median    p90    max")
    for name, values in (("after the task started", after_start), ("after stream() was called", after_call)):
        print(f"  {name:<38} {statistics.median(values):6.2f} {pct(values, 0.9):6.2f} {max(values):6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

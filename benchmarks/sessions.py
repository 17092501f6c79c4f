"""Stateless ``execute`` throughput on one worker with 0, 100 and 1,000 live sessions bound to it.

Run: ``.venv/bin/python benchmarks/sessions.py`` (a few minutes on 2 cores).

Why: kombu's Redis transport sends one BRPOP naming every queue a worker
consumes (times each priority step) and re-sends it after every message, so
a worker consuming one queue per session slows down as sessions pile up.
Snakepit's owner releases the consumer of an idle session (``consumer_idle``,
10 s by default on a Redis broker; the session stays bound, its next call
wakes the owner), so idle sessions cost nothing. RabbitMQ pays nothing per
consumer and keeps them.

For each broker (a private Redis; the machine's RabbitMQ under a unique prefix,
whose queues are deleted afterwards) one worker (threads pool) gets N sessions
bound to it (one call each), and once their consumers have settled (released
on Redis), ``--tasks`` stateless pings are timed as groups. On Redis the same is
also measured with release turned off (``consumer_idle = 0``): the cost the
release avoids. Target (issue 4): >= 0.7 of the 0-session figure at 1,000.

    .venv/bin/python benchmarks/sessions.py [--tasks 3000] [--sessions 0,100,1000]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from celery import Celery, group
from kombu import Connection

from snakepit_celery import PoolConfig, SnakepitConfig, install
from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.workerproc import WorkerProcess

HERE = Path(__file__).resolve().parent
AMQP_URL = os.environ.get("SNAKEPIT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
#: Rounds each throughput figure is split into.
ROUNDS = 3
#: Seconds idle before release in the benchmark's "release" workers (default 10 s).
IDLE = 2.0


def make_app(broker: str, backend: str, prefix: str) -> Celery:
    app = Celery("bench-sessions", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_default_queue=f"{prefix}.default",
        control_exchange=f"{prefix}.control",
        event_exchange=f"{prefix}.ev",
    )
    install(app, SnakepitConfig(pools=(PoolConfig(size=2),), queue_prefix=prefix))
    return app


if "BENCH_PREFIX" in os.environ:  # the worker side: celery -A sessions worker
    app = make_app(os.environ["BENCH_BROKER"], os.environ["BENCH_BACKEND"], os.environ["BENCH_PREFIX"])


def throughput(app: Celery, tasks: int) -> float:
    """Stateless pings per second, ``tasks`` of them in ``ROUNDS`` groups."""
    ping = app.tasks["snakepit.execute"].s("ping", {})
    per_round = max(1, tasks // ROUNDS)
    elapsed = 0.0
    for _ in range(ROUNDS):
        started = time.perf_counter()
        results = group(ping.clone() for _ in range(per_round)).apply_async()
        results.get(timeout=600)
        elapsed += time.perf_counter() - started
        results.forget()
    return per_round * ROUNDS / elapsed


def bind(app: Celery, sids: list[str]) -> None:
    """One call per new session (binds it to the only worker), in batches."""
    call = app.tasks["snakepit.execute_in_session"]
    for start in range(0, len(sids), 200):
        results = [call.delay(sid, "ping", {}) for sid in sids[start : start + 200]]
        for r in results:
            r.get(timeout=120)
            r.forget()


def consuming(redis_url: str, prefix: str) -> int:
    """Sessions whose owner consumes their queue right now (per the routes in Redis)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}:route:*", count=1000))
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, "active")
        return sum(1 for v in pipe.execute() if v == b"1")


class Bench:
    """One worker on one broker, and the caller's app."""

    def __init__(self, stack: ExitStack, broker: str, backend: str, idle: float, label: str) -> None:
        self.prefix = f"bs{uuid.uuid4().hex[:8]}"
        self.broker, self.backend, self.label, self.idle = broker, backend, label, idle
        self.app = make_app(broker, backend, self.prefix)
        stack.callback(self.app.close)
        hostname = f"{self.prefix}@{socket.gethostname()}"
        env = {
            "BENCH_BROKER": broker,
            "BENCH_BACKEND": backend,
            "BENCH_PREFIX": self.prefix,
            "SNAKEPIT_SESSION_CONSUMER_IDLE": str(idle),
        }
        argv = ["-A", "sessions", "worker", "-n", hostname, "--loglevel", "WARNING", "--without-mingle"]
        argv += ["--without-gossip", "--concurrency", "4"]
        self.worker = stack.enter_context(WorkerProcess(argv, env=env, cwd=str(HERE)))
        self.worker.wait_ready(self.app, hostname)
        self.sids: list[str] = []
        if not broker.startswith("redis"):
            stack.callback(self.delete_amqp_objects)

    def run(self, counts: list[int], tasks: int) -> list[tuple[str, int, float, int]]:
        throughput(self.app, 300)  # warm-up
        rows = []
        for n in counts:
            new = [f"s{i}" for i in range(len(self.sids), n)]
            bind(self.app, new)
            self.sids += new
            if self.idle:  # wait for the idle sessions' consumers to be released
                deadline = time.monotonic() + self.idle + 60
                while consuming(self.backend, self.prefix) and time.monotonic() < deadline:
                    time.sleep(0.5)
            rows.append((self.label, n, throughput(self.app, tasks), consuming(self.backend, self.prefix)))
        return rows

    def delete_amqp_objects(self) -> None:
        """Our queues and exchanges on the shared RabbitMQ (unique prefix), nobody else's."""
        p = self.prefix
        queues = [f"{p}.pool.python", f"{p}.default", *(f"{p}.session.{s}" for s in self.sids)]
        exchanges = [f"{p}.pool.python", f"{p}.default", f"{p}.control.pidbox", f"reply.{p}.control.pidbox"]
        with Connection(self.broker) as conn:
            channel = conn.channel()
            for q in queues:
                try:
                    channel.queue_delete(q)
                except conn.channel_errors:
                    channel = conn.channel()
            for ex in [*exchanges, f"{p}.ev"]:
                try:
                    channel.exchange_delete(ex)
                except conn.channel_errors:
                    channel = conn.channel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=3000, help="stateless pings per figure")
    parser.add_argument("--sessions", default="0,100,1000", help="live session counts, ascending")
    parser.add_argument("--skip-amqp", action="store_true", help="Redis broker only")
    ns = parser.parse_args()
    counts = [int(c) for c in ns.sessions.split(",")]

    rows: list[tuple[str, int, float, int]] = []
    with ExitStack() as stack:
        redis = stack.enter_context(EmbeddedRedis())
        setups = [("redis", redis.url(0), redis.url(1), IDLE, "redis")]
        setups.append(("redis", redis.url(2), redis.url(3), 0.0, "redis, release off"))
        if not ns.skip_amqp:
            try:
                with Connection(AMQP_URL, connect_timeout=2) as probe:
                    probe.ensure_connection(max_retries=1)
                setups.append(("amqp", AMQP_URL, redis.url(4), 0.0, "rabbitmq"))
            except Exception as exc:  # any failure means "no RabbitMQ here"
                print(f"RabbitMQ not reachable at {AMQP_URL} ({exc}); Redis only", file=sys.stderr)
        for _kind, broker, backend, idle, label in setups:
            with ExitStack() as one:
                rows += Bench(one, broker, backend, idle, label).run(counts, ns.tasks)

    print(
        f"Stateless execute('ping') throughput on one worker (2 bridges, 4 threads) "
        f"with live sessions bound to it; {ns.tasks} tasks per figure"
    )
    header = ("broker", "sessions", "consumers on", "tasks/s", "vs 0 sessions")
    table: list[tuple[str, ...]] = [header]
    base: dict[str, float] = {}
    met = True
    for label, n, tps, on in rows:
        base.setdefault(label, tps)
        ratio = tps / base[label]
        if n >= 1000 and "off" not in label:
            met = met and ratio >= 0.7
        table.append((label, f"{n:,}", f"{on:,}", f"{tps:,.0f}", f"{ratio:.2f}x"))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print("target (>= 0.70x at 1,000 sessions, release on / RabbitMQ):", "met" if met else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sessions at scale: 10,000 live sessions on one worker, on a Redis broker and on RabbitMQ.

Run: ``.venv/bin/python benchmarks/sessions.py`` (about 6 minutes on 2 cores).

For each broker (a private Redis; the machine's RabbitMQ under a unique prefix,
whose queues are deleted afterwards) one worker (2 bridges, 4 threads) gets N
sessions bound to it, one cheap call per session sent as Celery groups. The
sessions live in a Redis of their own, so its ``used_memory`` counts them and
nothing else. Printed in one table, per broker:

* stateless ``execute("ping")`` throughput at 0 sessions and at each count
  (``--tasks`` pings as groups), and the ratio (target: >= 0.7x at 10,000);
* memory per idle session: RSS growth of the worker's process tree (worker and
  bridges, psutil) and ``used_memory`` growth of the sessions Redis, over the
  largest count;
* takeover: a second worker starts, the owner's process tree gets SIGKILL, and
  the time until every route ``<prefix>:route:<sid>`` names the survivor, then
  until one call to each of a sample of those sessions has answered. Both are
  counted from the kill, so they include the lease (``lease_ttl``, 7 s by
  default) that must lapse before anyone may take over.

Why it matters: kombu's Redis transport sends one BRPOP naming every queue a
worker consumes and re-sends it after every message, so a worker consuming one
queue per session slows down as sessions pile up. Snakepit's owner releases the
consumer of an idle session (``consumer_idle``; 2 s here, 10 s by default), so
idle sessions should cost little. RabbitMQ pays nothing per consumer and keeps
them. ``--release-off`` adds a Redis worker that never releases (the cost the
release avoids; slow at 10,000).

    .venv/bin/python benchmarks/sessions.py [--tasks 1500] [--sessions 0,10000]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import sys
import time
import uuid
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis as redis_lib
from celery import Celery, group
from kombu import Connection

from snakepit_celery import PoolConfig, SnakepitConfig, install
from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.integration.workerproc import WorkerProcess

HERE = Path(__file__).resolve().parent
AMQP_URL = os.environ.get("SNAKEPIT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
#: Rounds each throughput figure is split into.
ROUNDS = 3
#: Seconds idle before release in the benchmark's "release" workers (default 10 s).
IDLE = 2.0
#: Session calls per group when binding.
BIND_GROUP = 500
#: Sessions the takeover's sample call goes to.
SAMPLE = 50
#: Seconds the takeover may take before the benchmark gives up on it.
TAKEOVER_TIMEOUT = 300.0


def make_app(broker: str, backend: str, prefix: str, sessions_redis: str) -> Celery:
    app = Celery("bench-sessions", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_default_queue=f"{prefix}.default",
        control_exchange=f"{prefix}.control",
        event_exchange=f"{prefix}.ev",
    )
    config = SnakepitConfig(pools=(PoolConfig(size=2),), queue_prefix=prefix, redis_url=sessions_redis)
    install(app, config)
    return app


if "BENCH_PREFIX" in os.environ:  # the worker side: celery -A sessions worker
    app = make_app(
        os.environ["BENCH_BROKER"],
        os.environ["BENCH_BACKEND"],
        os.environ["BENCH_PREFIX"],
        os.environ["BENCH_SESSIONS_REDIS"],
    )


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


def call_each(app: Celery, sids: list[str], timeout: float = 600) -> None:
    """One ``execute_in_session("ping")`` per session, sent as groups of ``BIND_GROUP``;
    the first call of a new session binds it to the least-loaded live worker."""
    call = app.tasks["snakepit.execute_in_session"]
    for start in range(0, len(sids), BIND_GROUP):
        results = group(call.s(sid, "ping", {}) for sid in sids[start : start + BIND_GROUP]).apply_async()
        results.get(timeout=timeout)
        results.forget()


def tree_rss(pid: int) -> int:
    """RSS of a process and all its descendants, in bytes."""
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


@dataclass
class Result:
    label: str
    #: (sessions, tasks/s, consumers on)
    points: list[tuple[int, float, int]] = field(default_factory=list)
    sessions: int = 0
    bind_s: float = 0.0
    rss_per: float | None = None
    redis_per: float | None = None
    first_moved_s: float | None = None
    all_moved_s: float | None = None
    sample_s: float | None = None


class Bench:
    """Workers on one broker, their sessions Redis, and the caller's app."""

    def __init__(self, stack: ExitStack, broker: str, backend: str, idle: float, label: str) -> None:
        self.stack = stack
        self.prefix = f"bs{uuid.uuid4().hex[:8]}"
        self.broker, self.backend, self.idle = broker, backend, idle
        self.result = Result(label)
        self.sessions_redis = stack.enter_context(EmbeddedRedis())
        self.redis = redis_lib.Redis.from_url(self.sessions_redis.url(0))
        stack.callback(self.redis.close)
        self.app = make_app(broker, backend, self.prefix, self.sessions_redis.url(0))
        stack.callback(self.app.close)
        self.sids: list[str] = []
        self.hostnames: list[str] = []
        if not broker.startswith("redis"):
            stack.callback(self.delete_amqp_objects)
        self.worker, self.hostname = self.start_worker("a")

    def start_worker(self, tag: str) -> tuple[WorkerProcess, str]:
        hostname = f"{self.prefix}{tag}@{socket.gethostname()}"
        self.hostnames.append(hostname)
        env = {
            "BENCH_BROKER": self.broker,
            "BENCH_BACKEND": self.backend,
            "BENCH_PREFIX": self.prefix,
            "BENCH_SESSIONS_REDIS": self.sessions_redis.url(0),
            "SNAKEPIT_SESSION_CONSUMER_IDLE": str(self.idle),
        }
        argv = ["-A", "sessions", "worker", "-n", hostname, "--loglevel", "WARNING", "--without-mingle"]
        argv += ["--without-gossip", "--concurrency", "4"]
        worker = self.stack.enter_context(WorkerProcess(argv, env=env, cwd=str(HERE)))
        worker.wait_ready(self.app, hostname)
        return worker, hostname

    def owners(self) -> list[str]:
        """The owner named by each session's route, in ``self.sids`` order."""
        with self.redis.pipeline(transaction=False) as pipe:
            for sid in self.sids:
                pipe.hget(f"{self.prefix}:route:{sid}", "owner")
            return [(v or b"").decode() for v in pipe.execute()]

    def consuming(self) -> int:
        """Sessions whose owner consumes their queue right now (per the routes in Redis)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for sid in self.sids:
                pipe.hget(f"{self.prefix}:route:{sid}", "active")
            return sum(1 for v in pipe.execute() if v == b"1")

    def settle(self) -> None:
        """Wait for the idle sessions' consumers to be released (when the worker releases)."""
        if self.idle:
            deadline = time.monotonic() + self.idle + 120
            while self.consuming() and time.monotonic() < deadline:
                time.sleep(0.5)
        time.sleep(1.0)

    def used_memory(self) -> int:
        return int(self.redis.info("memory")["used_memory"])

    def run(self, counts: list[int], tasks: int) -> Result:
        r = self.result
        throughput(self.app, 300)  # warm-up
        rss0 = redis0 = 0
        for n in counts:
            new = [f"s{i}" for i in range(len(self.sids), n)]
            if not self.sids:
                rss0, redis0 = tree_rss(self.worker.pid), self.used_memory()
            started = time.monotonic()
            call_each(self.app, new)
            r.bind_s += time.monotonic() - started
            self.sids += new
            self.settle()
            if self.sids:
                r.sessions = len(self.sids)
                r.rss_per = (tree_rss(self.worker.pid) - rss0) / len(self.sids)
                r.redis_per = (self.used_memory() - redis0) / len(self.sids)
            r.points.append((n, throughput(self.app, tasks), self.consuming()))
            print(f"  {r.label}: {n:,} sessions, {r.points[-1][1]:,.0f} tasks/s", file=sys.stderr)
        if self.sids:
            self.takeover()
        return r

    def takeover(self) -> None:
        """Start a survivor, SIGKILL the owner's process tree, time the handover."""
        r = self.result
        _survivor, hostname = self.start_worker("b")
        mine = f"{hostname}#"
        victims = [psutil.Process(self.worker.pid), *psutil.Process(self.worker.pid).children(recursive=True)]
        killed = time.monotonic()
        for proc in victims:
            with suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        deadline = killed + TAKEOVER_TIMEOUT
        while time.monotonic() < deadline:
            moved = sum(1 for owner in self.owners() if owner.startswith(mine))
            now = time.monotonic() - killed
            if moved and r.first_moved_s is None:
                r.first_moved_s = now
            if moved == len(self.sids):
                r.all_moved_s = now
                break
            time.sleep(0.2)
        if r.all_moved_s is None:
            print(f"  {r.label}: takeover incomplete after {TAKEOVER_TIMEOUT:.0f} s", file=sys.stderr)
            return
        call_each(self.app, random.Random(0).sample(self.sids, min(SAMPLE, len(self.sids))), timeout=300)
        r.sample_s = time.monotonic() - killed

    def delete_amqp_objects(self) -> None:
        """Our queues and exchanges on the shared RabbitMQ (unique prefix), nobody else's."""
        p = self.prefix
        queues = [f"{p}.pool.python", f"{p}.default", *(f"{p}.session.{s}" for s in self.sids)]
        queues += [f"{h}.celery.pidbox" for h in self.hostnames]
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


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def print_table(results: list[Result], tasks: int, lease_ttl: str) -> bool:
    print(
        f"Sessions at scale on one worker (2 bridges, 4 threads); {tasks} stateless execute('ping') "
        f"per figure; consumer_idle {IDLE:g} s on Redis; lease_ttl {lease_ttl} s"
    )
    header = (
        "broker",
        "sessions",
        "consumers on",
        "tasks/s",
        "vs 0",
        "bind",
        "worker RSS/session",
        "Redis/session",
        "takeover: 1st route",
        "all routes",
        "sample call",
    )
    table: list[tuple[str, ...]] = [header]
    met = True
    for r in results:
        base = r.points[0][1]
        for i, (n, tps, on) in enumerate(r.points):
            ratio = tps / base
            last = i == len(r.points) - 1
            if last and n >= 1000 and "off" not in r.label:
                met = met and ratio >= 0.7
            extra = ("",) * 6
            if last and r.sessions:
                extra = (
                    f"{r.sessions / r.bind_s:,.0f}/s" if r.bind_s else "-",
                    "-" if r.rss_per is None else f"{r.rss_per / 1024:.1f} KiB",
                    "-" if r.redis_per is None else f"{r.redis_per:,.0f} B",
                    seconds(r.first_moved_s),
                    seconds(r.all_moved_s),
                    seconds(r.sample_s),
                )
            table.append((r.label, f"{n:,}", f"{on:,}", f"{tps:,.0f}", f"{ratio:.2f}x", *extra))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    verdict = "met" if met else "NOT met"
    print("throughput target (>= 0.70x at the largest count, release on / RabbitMQ):", verdict)
    print(
        "takeover times count from the SIGKILL of the owner's process tree; the sample is one call to each "
        f"of {SAMPLE} sessions, sent once all routes name the survivor"
    )
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1500, help="stateless pings per figure")
    parser.add_argument("--sessions", default="0,10000", help="live session counts, ascending, from 0")
    parser.add_argument("--skip-amqp", action="store_true", help="Redis broker only")
    parser.add_argument("--release-off", action="store_true", help="add a Redis worker that never releases")
    ns = parser.parse_args()
    counts = [int(c) for c in ns.sessions.split(",")]
    if counts[0] != 0:
        counts.insert(0, 0)

    results: list[Result] = []
    with ExitStack() as stack:
        redis = stack.enter_context(EmbeddedRedis())
        setups = [(redis.url(0), redis.url(1), IDLE, "redis")]
        if ns.release_off:
            setups.append((redis.url(2), redis.url(3), 0.0, "redis, release off"))
        if not ns.skip_amqp:
            try:
                with Connection(AMQP_URL, connect_timeout=2) as probe:
                    probe.ensure_connection(max_retries=1)
                setups.append((AMQP_URL, redis.url(4), 0.0, "rabbitmq"))
            except Exception as exc:  # any failure means "no RabbitMQ here"
                print(f"RabbitMQ not reachable at {AMQP_URL} ({exc}); Redis only", file=sys.stderr)
        for broker, backend, idle, label in setups:
            with ExitStack() as one:
                results.append(Bench(one, broker, backend, idle, label).run(counts, ns.tasks))

    print_table(results, ns.tasks, os.environ.get("SNAKEPIT_SESSION_LEASE_TTL", "7"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

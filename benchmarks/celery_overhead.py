"""What snakepit adds to a Celery task: plain no-op task vs ``execute("ping")``, one run.

Both run on the same worker (threads pool, same concurrency, events on), the
same broker and result backend (a private Redis unless SNAKEPIT_BROKER_URL is
set), interleaved so that a change of machine load hits both alike:

* throughput: 10,000 tasks of each, sent as groups in alternating rounds,
  timed until the round's last result;
* latency: sequential ``delay().get()``, alternating, p50 and p99.

Targets (issue 3): throughput >= 0.8 of plain Celery's; p50 <= plain + 1 ms.

    .venv/bin/python benchmarks/celery_overhead.py [--tasks 10000] [--calls 1000]

``--grpc-experiments ""`` runs the worker and its bridges on gRPC's own
defaults instead of snakepit's setting (see ``snakepit_celery.grpcenv``).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from celery import Celery, group, shared_task

from snakepit_celery import PoolConfig, SnakepitConfig, install
from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.workerproc import WorkerProcess

HERE = Path(__file__).resolve().parent


@shared_task(name="bench.noop")
def noop() -> None:
    """The plain Celery task: no bridge, nothing to do."""


def make_app(broker: str, backend: str, prefix: str, pool_size: int) -> Celery:
    app = Celery("bench", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(task_default_queue=f"{prefix}.default", control_exchange=f"{prefix}.control")
    install(app, SnakepitConfig(pools=(PoolConfig(size=pool_size),), queue_prefix=prefix))
    return app


if "BENCH_PREFIX" in os.environ:  # the worker side: celery -A celery_overhead worker
    app = make_app(
        os.environ["BENCH_BROKER"], os.environ["BENCH_BACKEND"], os.environ["BENCH_PREFIX"],
        int(os.environ["BENCH_POOL_SIZE"]),
    )  # fmt: skip


#: Rounds the throughput runs are split into (alternating plain / snakepit).
ROUNDS = 5


def timed_group(sig: Any, count: int) -> float:
    """Seconds from sending ``count`` copies of ``sig`` as a group to the last result."""
    started = time.perf_counter()
    results = group(sig.clone() for _ in range(count)).apply_async()
    results.get(timeout=600)
    elapsed = time.perf_counter() - started
    results.forget()
    return elapsed


def throughputs(sigs: tuple[Any, Any], count: int) -> tuple[float, float]:
    """Tasks per second of each signature, ``count`` tasks each, in alternating rounds."""
    elapsed = [0.0, 0.0]
    per_round = max(1, count // ROUNDS)
    for _ in range(ROUNDS):
        for i, sig in enumerate(sigs):
            elapsed[i] += timed_group(sig, per_round)
    return per_round * ROUNDS / elapsed[0], per_round * ROUNDS / elapsed[1]


def latencies(calls: tuple[Any, Any], count: int) -> tuple[list[float], list[float]]:
    """Milliseconds of sequential ``delay().get()``, alternating between the two calls."""
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(count):
        for i, (task, args) in enumerate(calls):
            started = time.perf_counter()
            task.delay(*args).get(timeout=30)
            samples[i].append((time.perf_counter() - started) * 1000)
    return samples


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per throughput run")
    parser.add_argument("--calls", type=int, default=1_000, help="sequential calls per latency run")
    parser.add_argument("--pool-size", type=int, default=2, help="bridges (and worker threads)")
    parser.add_argument("--concurrency", type=int, default=None, help="worker threads (default: install's)")
    parser.add_argument(
        "--grpc-experiments", default=None, help="GRPC_EXPERIMENTS for the worker (default: snakepit's)"
    )
    ns = parser.parse_args()

    with ExitStack() as stack:
        broker = os.environ.get("SNAKEPIT_BROKER_URL")
        backend = os.environ.get("SNAKEPIT_RESULT_BACKEND") or os.environ.get("SNAKEPIT_REDIS_URL")
        if not broker or not backend:
            redis = stack.enter_context(EmbeddedRedis())
            broker, backend = broker or redis.url(0), backend or redis.url(1)
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        app = make_app(broker, backend, prefix, ns.pool_size)
        stack.callback(app.close)
        hostname = f"{prefix}@{socket.gethostname()}"
        env = {"BENCH_BROKER": broker, "BENCH_BACKEND": backend, "BENCH_PREFIX": prefix}
        env["BENCH_POOL_SIZE"] = str(ns.pool_size)
        if ns.grpc_experiments is not None:
            env["GRPC_EXPERIMENTS"] = ns.grpc_experiments
        argv = [
            "-A",
            "celery_overhead",
            "worker",
            "-n",
            hostname,
            "--loglevel",
            "WARNING",
            "--without-mingle",
        ]
        if ns.concurrency:
            argv += ["--concurrency", str(ns.concurrency)]
        worker = stack.enter_context(WorkerProcess([*argv, "--without-gossip"], env=env, cwd=str(HERE)))
        worker.wait_ready(app, hostname)

        plain, ping = app.tasks["bench.noop"], app.tasks["snakepit.execute"]
        plain_sig, ping_sig = plain.s(), ping.s("ping", {})
        throughputs((plain_sig, ping_sig), 500)  # warm-up: connections, bridges, caches
        tp_plain, tp_ping = throughputs((plain_sig, ping_sig), ns.tasks)
        lat_plain, lat_ping = latencies(((plain, ()), (ping, ("ping", {}))), ns.calls)

    p50 = (percentile(lat_plain, 50), percentile(lat_ping, 50))
    p99 = (percentile(lat_plain, 99), percentile(lat_ping, 99))
    ratio = tp_ping / tp_plain
    rows = [
        ("", "plain Celery no-op", 'execute("ping")', "snakepit vs plain", "target"),
        (
            f"throughput, {ns.tasks} tasks",
            f"{tp_plain:,.0f}/s",
            f"{tp_ping:,.0f}/s",
            f"{ratio:.2f}x",
            ">= 0.80x",
        ),
        ("latency p50", f"{p50[0]:.2f} ms", f"{p50[1]:.2f} ms", f"{p50[1] - p50[0]:+.2f} ms", "<= +1 ms"),
        ("latency p99", f"{p99[0]:.2f} ms", f"{p99[1]:.2f} ms", f"{p99[1] - p99[0]:+.2f} ms", ""),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(
        f"Celery overhead: {ns.pool_size} bridges, threads pool"
        + (f" of {ns.concurrency}" if ns.concurrency else "")
        + ", "
        + f"broker {broker.split('://')[0]}, one run, interleaved"
        + ("" if ns.grpc_experiments is None else f", GRPC_EXPERIMENTS={ns.grpc_experiments!r}")
    )
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    met = ratio >= 0.8 and p50[1] - p50[0] <= 1.0
    print("targets met" if met else "targets NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())

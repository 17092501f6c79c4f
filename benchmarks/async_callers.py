"""Async callers against sync ones: 1,000 concurrent ``aexecute`` from one event loop vs 1,000
``execute.delay().get()`` from a thread pool of 64, on the same worker, in one run.

One worker (threads pool, its own private Redis as broker and result backend)
serves every round. Each round starts a fresh caller process (this file with
``--caller``), so its threads and memory are its own: the async caller sends
all the calls at once from one loop (``asyncio.gather``); the sync caller
hands them to a ``ThreadPoolExecutor(64)``, each thread calling
``execute.delay("ping", {}).get()``. The rounds alternate (async, sync, ...)
so that a change of machine load hits both alike; the table gives the median
round.

* throughput: calls / seconds from the first send to the last result;
* p50, p99: each call's seconds from its send to its result;
* peak threads: the caller's, sampled every 10 ms from inside the caller (the
  loop's own task / the waiting main thread: no sampling thread);
* peak RSS: the caller's ``ru_maxrss``, and its growth over the RSS before the calls.

Target (issue 16): the async caller reaches at least the sync caller's
throughput with one thread.

    .venv/bin/python benchmarks/async_callers.py [--calls 1000] [--threads 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil
from celery import Celery

from snakepit_celery import PoolConfig, SnakepitConfig, aclose_clients, aexecute, install
from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.integration.workerproc import WorkerProcess

HERE = Path(__file__).resolve().parent
#: Seconds between two samples of the caller's threads.
SAMPLE_EVERY = 0.01


def make_app(broker: str, prefix: str, pool_size: int) -> Celery:
    app = Celery("bench-aio", broker=broker, backend=broker, set_as_current=False)
    app.conf.update(task_default_queue=f"{prefix}.default", control_exchange=f"{prefix}.control")
    install(app, SnakepitConfig(pools=(PoolConfig(size=pool_size),), queue_prefix=prefix))
    return app


if "BENCH_PREFIX" in os.environ:  # the worker side (celery -A async_callers worker) and the callers
    app = make_app(os.environ["BENCH_BROKER"], os.environ["BENCH_PREFIX"], int(os.environ["BENCH_POOL_SIZE"]))


# -- the callers (subprocesses) -------------------------------------------------------------------


def rss_mib() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def async_caller(calls: int) -> dict[str, Any]:
    me = psutil.Process()

    async def main() -> dict[str, Any]:
        await aexecute("ping", {}, app=app)  # warm: connections, subscriptions
        before = rss_mib()
        threads = [me.num_threads()]
        latencies: list[float] = []

        async def one() -> None:
            started = time.perf_counter()
            await aexecute("ping", {}, app=app)
            latencies.append(time.perf_counter() - started)

        async def sample() -> None:
            while True:
                threads.append(me.num_threads())
                await asyncio.sleep(SAMPLE_EVERY)

        sampler = asyncio.ensure_future(sample())
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(calls)))
        elapsed = time.perf_counter() - started
        sampler.cancel()
        await aclose_clients()
        return {"elapsed": elapsed, "latencies": latencies, "threads": max(threads), "rss_before": before}

    return asyncio.run(main())


def sync_caller(calls: int, threads: int) -> dict[str, Any]:
    me = psutil.Process()
    execute = app.tasks["snakepit.execute"]
    execute.delay("ping", {}).get(timeout=30)
    latencies: list[float] = []

    def one() -> None:
        started = time.perf_counter()
        execute.delay("ping", {}).get(timeout=120)
        latencies.append(time.perf_counter() - started)

    with ThreadPoolExecutor(threads) as executor:
        list(executor.map(lambda _: execute.delay("ping", {}).get(timeout=30), range(threads)))  # warm
        before = rss_mib()
        seen = [me.num_threads()]
        started = time.perf_counter()
        futures = [executor.submit(one) for _ in range(calls)]
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=SAMPLE_EVERY)
            seen.append(me.num_threads())
        elapsed = time.perf_counter() - started
        for future in futures:
            future.result()
    return {"elapsed": elapsed, "latencies": latencies, "threads": max(seen), "rss_before": before}


def run_caller(kind: str, calls: int, threads: int) -> None:
    found = async_caller(calls) if kind == "async" else sync_caller(calls, threads)
    found["rss_peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(found))


# -- the run --------------------------------------------------------------------------------------


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def round_of(kind: str, ns: argparse.Namespace, env: dict[str, str]) -> dict[str, float]:
    argv = [sys.executable, str(Path(__file__)), "--caller", kind, "--calls", str(ns.calls)]
    argv += ["--threads", str(ns.threads)]
    out = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"the {kind} caller failed:\n{out.stderr[-3000:]}")
    found = json.loads(out.stdout.strip().splitlines()[-1])
    lat = found["latencies"]
    return {
        "throughput": ns.calls / found["elapsed"],
        "p50": percentile(lat, 50) * 1000,
        "p99": percentile(lat, 99) * 1000,
        "threads": found["threads"],
        "rss_peak": found["rss_peak"],
        "rss_growth": found["rss_peak"] - found["rss_before"],
    }


def median_round(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def print_table(ns: argparse.Namespace, a: dict[str, float], s: dict[str, float]) -> bool:
    rows = [
        ("", "aexecute, one loop", f"delay().get(), {ns.threads} threads", "async vs sync", "target"),
        (
            f"throughput, {ns.calls} calls",
            f"{a['throughput']:,.0f}/s",
            f"{s['throughput']:,.0f}/s",
            f"{a['throughput'] / s['throughput']:.2f}x",
            ">= 1.00x",
        ),
        ("latency p50", f"{a['p50']:.1f} ms", f"{s['p50']:.1f} ms", f"{a['p50'] / s['p50']:.2f}x", ""),
        ("latency p99", f"{a['p99']:.1f} ms", f"{s['p99']:.1f} ms", f"{a['p99'] / s['p99']:.2f}x", ""),
        (
            "peak threads",
            f"{a['threads']:.0f}",
            f"{s['threads']:.0f}",
            f"{a['threads'] / s['threads']:.2f}x",
            "",
        ),
        (
            "peak RSS (growth)",
            f"{a['rss_peak']:.0f} MiB (+{a['rss_growth']:.1f})",
            f"{s['rss_peak']:.0f} MiB (+{s['rss_growth']:.1f})",
            f"{a['rss_peak'] / s['rss_peak']:.2f}x",
            "",
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    # The loop's thread does the calls; psutil counts the interpreter's own helper threads too.
    met = a["throughput"] >= s["throughput"]
    print(
        f"async caller: {a['throughput'] / s['throughput']:.2f}x the sync caller's throughput with "
        f"{a['threads']:.0f} thread(s) in its process, vs {s['threads']:.0f}"
    )
    print("target met" if met else "target NOT met")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="concurrent calls per round")
    parser.add_argument("--threads", type=int, default=64, help="the sync caller's thread pool")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each caller, alternating")
    parser.add_argument("--pool-size", type=int, default=4, help="bridges of the worker")
    parser.add_argument("--concurrency", type=int, default=16, help="worker threads")
    parser.add_argument("--caller", choices=("async", "sync"), help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.caller:
        run_caller(ns.caller, ns.calls, ns.threads)
        return 0

    with ExitStack() as stack:
        redis = stack.enter_context(EmbeddedRedis())
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        env = {"BENCH_BROKER": redis.url(0), "BENCH_PREFIX": prefix, "BENCH_POOL_SIZE": str(ns.pool_size)}
        caller_app = make_app(env["BENCH_BROKER"], prefix, ns.pool_size)
        stack.callback(caller_app.close)
        hostname = f"{prefix}@{socket.gethostname()}"
        argv = ["-A", "async_callers", "worker", "-n", hostname, "--loglevel", "WARNING"]
        argv += ["--without-mingle", "--without-gossip", "--concurrency", str(ns.concurrency)]
        worker = stack.enter_context(WorkerProcess(argv, env=env, cwd=str(HERE)))
        worker.wait_ready(caller_app, hostname)

        rounds: dict[str, list[dict[str, float]]] = {"async": [], "sync": []}
        for _ in range(ns.rounds):
            for kind in ("async", "sync"):
                rounds[kind].append(round_of(kind, ns, env))
        print(
            f"Async callers: {ns.calls} concurrent ping calls per round, worker of {ns.pool_size} "
            f"bridges and {ns.concurrency} threads, Redis broker and backend, median of {ns.rounds} "
            "alternating rounds"
        )
        print_table(ns, median_round(rounds["async"]), median_round(rounds["sync"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Batch benchmark: a chord of one ``execute`` task per item vs ``batch_map``, one run.

Both run ``compute`` items on the same worker (one pool of ``--pool-size``
bridges, threads pool, the default concurrency ``install()`` gives), the same
broker and result backend (a private Redis unless SNAKEPIT_BROKER_URL is
set). Each run is timed from sending the signature to holding the list of
results (both chord bodies return the full list):

* (a) ``chord([execute.s("compute", item) for item in items], collect.s())``;
* (b) ``batch_map("compute", items)`` with its default chunk size;
* (c) for scale, the same items straight through a ``BridgePool`` of the same
  size in this process (no Celery at all), one ``execute`` (one gRPC call) per
  item: the ceiling of a map with one call per item;
* (d) the same pool with ``execute_batch`` slices of the size the map's runner
  uses, one slice per bridge in flight: the ceiling of (b).

Targets (issue 8): (b) >= 20x (a), and (b) > 2,000 items/s on one worker.
The load average is printed with the table: other work on the machine slows
both columns alike, but the absolute figures move with it.

    .venv/bin/python benchmarks/batch.py [--sizes 1000 10000] [--rounds 3]
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

from celery import Celery, chord, shared_task

from snakepit_celery import PoolConfig, SnakepitConfig, batch_map, install
from snakepit_celery.batch import chunk_size_for, pool_capacity
from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.integration.workerproc import WorkerProcess

HERE = Path(__file__).resolve().parent


@shared_task(name="bench.collect")
def collect(results: list[Any]) -> list[Any]:
    """The per-item chord's body: hand back the list, as the map's join does."""
    return results


def make_app(broker: str, backend: str, prefix: str, pool_size: int) -> Celery:
    app = Celery("bench-batch", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(task_default_queue=f"{prefix}.default", control_exchange=f"{prefix}.control")
    install(app, SnakepitConfig(pools=(PoolConfig(size=pool_size),), queue_prefix=prefix))
    return app


if "BENCH_PREFIX" in os.environ:  # the worker side: celery -A batch worker
    app = make_app(
        os.environ["BENCH_BROKER"], os.environ["BENCH_BACKEND"], os.environ["BENCH_PREFIX"],
        int(os.environ["BENCH_POOL_SIZE"]),
    )  # fmt: skip


def items_for(n: int) -> list[dict[str, Any]]:
    return [{"operation": "multiply", "a": i, "b": 3} for i in range(n)]


def check(results: list[Any], n: int) -> None:
    if [r["result"] for r in results] != [3 * i for i in range(n)]:
        raise SystemExit("wrong results")


def per_item_chord(app: Celery, n: int) -> float:
    """Items per second of a chord of ``n`` execute tasks."""
    execute = app.tasks["snakepit.execute"]
    started = time.perf_counter()
    sig = chord([execute.s("compute", item) for item in items_for(n)], app.tasks["bench.collect"].s())
    results = sig.apply_async().get(timeout=1800)
    elapsed = time.perf_counter() - started
    check(results, n)
    return n / elapsed


def mapped(app: Celery, n: int) -> float:
    """Items per second of ``batch_map`` over ``n`` items."""
    started = time.perf_counter()
    results = batch_map("compute", items_for(n), app=app).delay().get(timeout=600)
    elapsed = time.perf_counter() - started
    check(results, n)
    return n / elapsed


def pool_alone(n: int, size: int) -> tuple[float, float]:
    """Items per second through a BridgePool in this process, ``size`` threads: the ceilings.

    (one execute per item, execute_batch slices as the map's runner cuts them)
    """
    import itertools
    import tempfile
    import threading
    from collections.abc import Callable

    from snakepit_celery.batch.runner import slice_size
    from snakepit_celery.engine.pool import BridgePool

    items = items_for(n)
    step = slice_size(n, size)
    with tempfile.TemporaryDirectory(prefix="bb-") as tmp:
        pool = BridgePool(PoolConfig(name="ceiling", size=size), run_dir=Path(tmp) / "r", run_id="bench")
        pool.start()
        try:
            pool.execute("compute", items[0])

            def timed(work: Callable[[itertools.count[int]], None]) -> float:
                counter = itertools.count()
                threads = [threading.Thread(target=work, args=(counter,)) for _ in range(size)]
                started = time.perf_counter()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                return n / (time.perf_counter() - started)

            def one_by_one(counter: itertools.count[int]) -> None:
                while (i := next(counter)) < n:
                    pool.execute("compute", items[i])

            def sliced(counter: itertools.count[int]) -> None:
                while (i := next(counter) * step) < n:
                    pool.execute_batch("compute", items[i : i + step])

            return timed(one_by_one), timed(sliced)
        finally:
            pool.close(2.0)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000], help="items per batch")
    parser.add_argument("--rounds", type=int, default=3, help="map runs per size (median kept)")
    parser.add_argument("--chord-rounds", type=int, default=1, help="per-item chord runs per size")
    parser.add_argument("--pool-size", type=int, default=2, help="bridges of the worker's pool")
    ns = parser.parse_args()

    header = "items", "(a) chord of execute", "(b) batch_map", "(b)/(a)", "(c) pool, per item"
    rows = [(*header, "(d) pool, slices", "chunk", "load")]
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
        argv = ["-A", "batch", "worker", "-n", hostname, "--loglevel", "WARNING", "--without-mingle"]
        worker = stack.enter_context(WorkerProcess([*argv, "--without-gossip"], env=env, cwd=str(HERE)))
        worker.wait_ready(app, hostname)

        per_item_chord(app, 200)  # warm-up: connections, bridges, caches
        mapped(app, 2000)
        workers, bridges = pool_capacity(app, "python")
        best_map = 0.0
        for n in ns.sizes:
            start_load = load()
            a = statistics.median(per_item_chord(app, n) for _ in range(ns.chord_rounds))
            b = statistics.median(mapped(app, n) for _ in range(ns.rounds))
            c, d = pool_alone(n, ns.pool_size)
            best_map = max(best_map, b)
            chunk = chunk_size_for(n, workers, bridges)
            loads = f"{start_load} -> {load()}"
            rates = (f"{a:,.0f}/s", f"{b:,.0f}/s", f"{b / a:.1f}x", f"{c:,.0f}/s", f"{d:,.0f}/s")
            rows.append((f"{n:,}", *rates, str(chunk), loads))

    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(
        f"Batch: compute items, one worker, {ns.pool_size} bridges, threads pool, "
        f"broker {broker.split('://')[0]}, {os.cpu_count()} CPUs, one run"
    )
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    ratios = [float(r[3][:-1]) for r in rows[1:]]
    met = min(ratios) >= 20 and best_map > 2000
    print("targets (>= 20x, > 2,000 items/s) met" if met else "targets (>= 20x, > 2,000 items/s) NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())

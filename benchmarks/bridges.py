"""Bridges side by side: Python, Node.js and Ruby through the same pool.

Run: ``.venv/bin/python benchmarks/bridges.py`` (under a minute on 2 cores).

For each language it measures, in one run on one machine:

* start-up: launch of one bridge until its health service says SERVING
  (median of ``START_RUNS`` bridges started one at a time, so they do not
  compete with each other for the CPU);
* memory: resident set size of an idle bridge just started, and of the same
  bridge after the ping runs;
* ping through ``BridgePool.execute`` with 1 and 8 calling threads on a pool of
  ``POOL_SIZE`` bridges: calls/s, p50 and p99 latency;
* the baseline: the same ping as a plain gRPC ``Execute`` on the same bridges'
  sockets (no checkout, no encoding, no decoding), as ``raw/pool``, raw calls/s
  over pool calls/s (1.00x = the pool adds nothing).

All variants of one thread count run in interleaved short rounds, so a load
spike from elsewhere on the machine hits every language and its baseline alike;
the load average is printed before and after because the figures mean little
without it.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psutil
from snakepit_bridge._proto import bridge_pb2, bridge_pb2_grpc

from snakepit_celery.config import PoolConfig
from snakepit_celery.engine.pool import BridgePool
from snakepit_celery.engine.rpc import channel_options
from snakepit_celery.engine.telemetry import Telemetry

#: The languages compared; each is also its adapter alias.
LANGUAGES = ("python", "node", "ruby")
#: Bridges per pool in the ping runs (one per core here).
POOL_SIZE = 2
#: Calling threads of the two ping runs.
THREADS = (1, 8)
#: Single-bridge starts per language for the start-up median.
START_RUNS = 5
#: Interleaved rounds per variant, and their length in seconds.
ROUNDS = 8
ROUND_SECONDS = 0.5
_MIB = 1024 * 1024

Call = Callable[[], Any]
#: Makes the call of calling thread ``i``.
CallFactory = Callable[[int], Call]


class _StartTimes(Telemetry):
    """Collects each bridge's launch-to-SERVING time as the pool reports it."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def bridge_started(self, *, pool: str, pid: int, startup_time: float) -> None:
        self.times.append(startup_time)


class Bench:
    """Owns the run directory and every pool it starts, so all of them are closed."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="spbb-"))
        self.pools: list[BridgePool] = []
        self.channels: list[grpc.Channel] = []
        self._n = 0

    def pool(self, language: str, size: int, telemetry: Telemetry | None = None) -> BridgePool:
        self._n += 1
        pool = BridgePool(
            PoolConfig(name=language, adapter=language, size=size),
            run_dir=self.base / f"{language}{self._n}",
            run_id="bench",
            telemetry=telemetry,
        )
        self.pools.append(pool)
        pool.start()
        return pool

    def close_pool(self, pool: BridgePool) -> None:
        pool.close(2.0)
        self.pools.remove(pool)

    def raw_calls(self, pool: BridgePool) -> CallFactory:
        """Thread ``i`` calls ``Execute`` on bridge ``i % size`` through its own channel."""
        sockets = [_socket_of(b["pid"]) for b in pool.stats()["bridges"]]
        stubs = []
        for path in sockets:
            channel = grpc.insecure_channel(f"unix:{path}", options=channel_options(1 << 26))
            self.channels.append(channel)
            stubs.append(bridge_pb2_grpc.BridgeStub(channel).Execute)
        request = bridge_pb2.ExecuteRequest(command="ping", args=bridge_pb2.Payload(json=b"{}"))

        def factory(i: int) -> Call:
            stub = stubs[i % len(stubs)]
            return lambda: stub(request, timeout=10)

        return factory

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        for pool in list(self.pools):
            self.close_pool(pool)
        shutil.rmtree(self.base, ignore_errors=True)


def pool_calls(pool: BridgePool) -> CallFactory:
    """Every thread calls ``ping`` through the pool, which lends it a free bridge."""

    def call() -> Any:
        return pool.execute("ping", {})

    return lambda i: call


def _socket_of(pid: int) -> str:
    """The ``--socket`` argument of a bridge process (every bridge CLI takes it)."""
    argv = psutil.Process(pid).cmdline()
    return str(argv[argv.index("--socket") + 1])


def _tree_rss(pid: int) -> int:
    """Resident bytes of a bridge and any processes it started."""
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


# -- measuring -------------------------------------------------------------------


def measure(factory: CallFactory, threads: int, seconds: float) -> tuple[float, list[float]]:
    """Call in a loop on ``threads`` threads for ``seconds``: (calls/s, latencies in s)."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)
    stop = [0.0]

    def loop(call: Call, mine: list[float]) -> None:
        clock = time.perf_counter
        barrier.wait()
        while time.monotonic() < stop[0]:
            t0 = clock()
            call()
            mine.append(clock() - t0)

    workers = [threading.Thread(target=loop, args=(factory(i), latencies[i])) for i in range(threads)]
    for w in workers:
        w.start()
    stop[0] = time.monotonic() + seconds
    barrier.wait()
    began = time.monotonic()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - began
    flat = [x for mine in latencies for x in mine]
    return len(flat) / elapsed, flat


def compare(variants: dict[str, CallFactory], threads: int) -> dict[str, tuple[float, float, float]]:
    """Interleaved rounds of every variant: (median calls/s, p50 ms, p99 ms) each."""
    for factory in variants.values():
        measure(factory, threads, 0.2)  # warm up channels, JITs and caches
    rates: dict[str, list[float]] = {name: [] for name in variants}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, factory in variants.items():
            rate, lat = measure(factory, threads, ROUND_SECONDS)
            rates[name].append(rate)
            samples[name] += lat
    out = {}
    for name in variants:
        flat = sorted(samples[name])
        n = len(flat)
        out[name] = (
            statistics.median(rates[name]),
            flat[n // 2] * 1e3,
            flat[min(n - 1, int(n * 0.99))] * 1e3,
        )
    return out


def startup(bench: Bench, language: str) -> list[float]:
    """Launch-to-SERVING seconds of ``START_RUNS`` bridges started one at a time."""
    times = _StartTimes()
    for _ in range(START_RUNS):
        bench.close_pool(bench.pool(language, 1, times))
    return times.times


# -- the run -----------------------------------------------------------------------


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"


def run(bench: Bench) -> None:
    began = time.monotonic()
    print(f"snakepit-celery bridges benchmark (python {sys.version.split()[0]}, grpcio {grpc.__version__})")
    print(f"load average at start: {_load()}\n")

    starts = {lang: startup(bench, lang) for lang in LANGUAGES}
    pools = {lang: bench.pool(lang, POOL_SIZE) for lang in LANGUAGES}
    idle_rss = {
        lang: statistics.median(_tree_rss(b["pid"]) for b in pool.stats()["bridges"])
        for lang, pool in pools.items()
    }
    versions = {lang: pool.execute("info", {})["runtime_version"] for lang, pool in pools.items()}

    results: dict[int, dict[str, tuple[float, float, float]]] = {}
    for threads in THREADS:
        variants: dict[str, CallFactory] = {}
        for lang, pool in pools.items():
            variants[f"{lang} pool"] = pool_calls(pool)
            variants[f"{lang} raw"] = bench.raw_calls(pool)
        results[threads] = compare(variants, threads)
    busy_rss = {
        lang: statistics.median(_tree_rss(b["pid"]) for b in pool.stats()["bridges"])
        for lang, pool in pools.items()
    }

    print(
        f"Ping per language: pool of {POOL_SIZE} bridges vs raw gRPC Execute on the same bridges "
        f"({ROUNDS} interleaved rounds of {ROUND_SECONDS} s; calls/s is the median round)"
    )
    header = (
        f"{'bridge':8} {'runtime':9} {'thr':>3} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'raw/s':>7} {'raw p50':>7} {'raw/pool':>8} {'start s':>8} {'RSS MiB idle/after':>19}"
    )
    print(header)
    print("-" * len(header))
    for lang in LANGUAGES:
        for threads in THREADS:
            rate, p50, p99 = results[threads][f"{lang} pool"]
            raw_rate, raw_p50, _ = results[threads][f"{lang} raw"]
            first = threads == THREADS[0]
            start = f"{statistics.median(starts[lang]):.3f}" if first else ""
            rss = f"{idle_rss[lang] / _MIB:.0f} / {busy_rss[lang] / _MIB:.0f}" if first else ""
            print(
                f"{lang if first else '':8} {versions[lang] if first else '':9} {threads:>3} {rate:>8.0f} "
                f"{p50:>7.3f} {p99:>7.3f} {raw_rate:>7.0f} {raw_p50:>7.3f} {raw_rate / rate:>7.2f}x "
                f"{start:>8} {rss:>19}"
            )
    print(
        "\nstart s: launch until SERVING, median of "
        f"{START_RUNS} single-bridge starts (min-max: "
        + ", ".join(f"{lang} {min(t):.3f}-{max(t):.3f}" for lang, t in starts.items())
        + ")\nRSS: median over the pool's bridges, just started and after the ping runs.\n"
        "raw/pool: raw calls/s over pool calls/s on the same bridges and threads (1.00x = no overhead);\n"
        "with 8 threads raw calls may run several at once on one bridge, the pool gives a bridge one call."
    )
    print(f"\nload average at end: {_load()}")
    print(f"total benchmark time {time.monotonic() - began:.0f} s")


def main() -> None:
    bench = Bench()
    try:
        run(bench)
    finally:
        bench.close()


if __name__ == "__main__":
    main()

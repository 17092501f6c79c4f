"""Bridge pool benchmark: start-up, call overhead against raw gRPC, replacement time.

Run: ``.venv/bin/python benchmarks/pool.py`` (about 40 s on 2 cores).
Everything is measured in the same run on the same machine, so the ratios
compare like with like: the "raw" rows call a bridge's stub directly, with no
pool in between (no checkout, no encoding, no decoding).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from snakepit_bridge._proto import bridge_pb2, bridge_pb2_grpc

from snakepit_celery.config import PoolConfig
from snakepit_celery.engine.adapters import resolve_adapter
from snakepit_celery.engine.adapters.base import max_message_bytes
from snakepit_celery.engine.bridge import Bridge, spawn_process
from snakepit_celery.engine.pool import BridgePool
from snakepit_celery.engine.rpc import channel_options
from snakepit_celery.engine.telemetry import Telemetry

SIZES = (1, 4, 8, 16)
ROUNDS = 6
ROUND_SECONDS = 0.5
KILLS = 5
BASE = Path(tempfile.mkdtemp(prefix="spb-"))
_counter = iter(range(10**6))


def run_dir() -> Path:
    return BASE / f"r{next(_counter)}"


def new_pool(**options: Any) -> BridgePool:
    return BridgePool(PoolConfig(name="bench", **options), run_dir=run_dir(), run_id="bench")


# -- start-up --------------------------------------------------------------------


def start_sequential(n: int) -> float:
    """One bridge after another, each waited for before the next is launched."""
    config = PoolConfig(name="bench", size=n)
    adapter = resolve_adapter("python")
    directory = run_dir()
    directory.mkdir(mode=0o700, parents=True)
    bridges: list[Bridge] = []
    started = time.monotonic()
    try:
        for i in range(n):
            path = str(directory / f"s{i}.sock")
            spec = adapter.launch(config, socket_path=path, run_id="bench", parent_pid=_pid())
            bridge = Bridge(
                spawn_process(spec), socket_path=path, max_message_bytes=max_message_bytes(config)
            )
            bridges.append(bridge)
            bridge.wait_serving(time.monotonic() + 30)
        return time.monotonic() - started
    finally:
        for bridge in bridges:
            bridge.close_channel()
            bridge.kill()
            bridge.process.has_exited(5.0)
            bridge.process.reap()
            bridge.process.close()


def _pid() -> int:
    import os

    return os.getpid()


def start_pool(n: int, method: str) -> float:
    pool = new_pool(size=n, start_method=method)
    started = time.monotonic()
    try:
        pool.start()
        return time.monotonic() - started
    finally:
        pool.close(2.0)


# -- calls -----------------------------------------------------------------------


Caller = Callable[[int], Callable[[], Any]]


def measure(factory: Caller, threads: int, seconds: float) -> tuple[int, float, list[float]]:
    """Run ``factory(i)()`` in a loop on ``threads`` threads for ``seconds``: (calls, elapsed, latencies)."""
    calls = [factory(i) for i in range(threads)]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stop = [0.0]
    barrier = threading.Barrier(threads + 1)

    def worker(call: Callable[[], Any], mine: list[float]) -> None:
        clock = time.perf_counter
        barrier.wait()
        while time.monotonic() < stop[0]:
            t0 = clock()
            call()
            mine.append(clock() - t0)

    workers = [
        threading.Thread(target=worker, args=(c, lat)) for c, lat in zip(calls, latencies, strict=True)
    ]
    for w in workers:
        w.start()
    stop[0] = time.monotonic() + seconds
    barrier.wait()
    began = time.monotonic()
    for w in workers:
        w.join()
    flat = [x for lat in latencies for x in lat]
    return len(flat), time.monotonic() - began, flat


def compare(variants: dict[str, Caller], threads: int) -> dict[str, tuple[float, float, float]]:
    """Interleave short rounds of every variant (the machine's load hits all alike);
    (median calls/s over rounds, p50 ms, p99 ms) per variant."""
    for factory in variants.values():
        measure(factory, threads, 0.2)  # warm up
    rates: dict[str, list[float]] = {name: [] for name in variants}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, factory in variants.items():
            count, elapsed, lat = measure(factory, threads, ROUND_SECONDS)
            rates[name].append(count / elapsed)
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


def raw_factory(pool: BridgePool, bridges: int) -> tuple[Caller, list[grpc.Channel]]:
    """Thread i calls Execute on the pool's bridge i % ``bridges`` through its own stub; no pool."""
    pids = [b["pid"] for b in pool.stats()["bridges"]][:bridges]
    sockets = [pool._bridges[pid].socket_path for pid in pids]
    channels = [grpc.insecure_channel(f"unix:{s}", options=channel_options(1 << 26)) for s in sockets]
    stubs = [bridge_pb2_grpc.BridgeStub(c).Execute for c in channels]
    request = bridge_pb2.ExecuteRequest(command="ping", args=bridge_pb2.Payload(json=b"{}"))

    def factory(i: int) -> Callable[[], Any]:
        stub = stubs[i % len(stubs)]
        return lambda: stub(request)

    return factory, channels


def throughput_rows() -> list[tuple[str, float, float, float, float, float | None]]:
    """(name, calls/s, p50, p99, raw-1-bridge ratio, ratio to raw on the same bridges)."""
    rows = []
    for threads, sizes in ((1, (1,)), (8, (2, 8))):
        pool = new_pool(size=max(sizes))
        pools = {size: new_pool(size=size) for size in sizes if size != max(sizes)}
        pools[max(sizes)] = pool
        for p in pools.values():
            p.start()
        try:
            raw_one, channels = raw_factory(pool, 1)
            variants: dict[str, Caller] = {f"raw gRPC, 1 bridge, {threads} thr": raw_one}
            for size, p in sorted(pools.items()):
                if size > 1:
                    raw_n, more = raw_factory(p, size)
                    channels += more
                    variants[f"raw gRPC, {size} bridges, {threads} thr"] = raw_n
                variants[f"pool size {size}, {threads} thr"] = lambda i, p=p: lambda: p.execute("ping", {})
            results = compare(variants, threads)
            base = results[f"raw gRPC, 1 bridge, {threads} thr"][0]
            for name, (rate, p50, p99) in results.items():
                matched = None
                if name.startswith("pool size"):
                    size = int(name.split()[2].rstrip(","))
                    raw = f"raw gRPC, {size} bridge{'s' if size > 1 else ''}, {threads} thr"
                    matched = results[raw][0] / rate
                rows.append((name, rate, p50, p99, base / rate, matched))
            for channel in channels:
                channel.close()
        finally:
            for p in pools.values():
                p.close(2.0)
    return rows


# -- replacement -----------------------------------------------------------------


class _Started(Telemetry):
    def __init__(self) -> None:
        self.event = threading.Event()

    def bridge_started(self, *, pool: str, pid: int, startup_time: float) -> None:
        self.event.set()


def replacement(method: str) -> list[float]:
    """Seconds from SIGKILL of an idle bridge to its successor serving, ``KILLS`` times."""
    import os
    import signal

    hook = _Started()
    pool = BridgePool(
        PoolConfig(name="bench", size=4, start_method=method),
        run_dir=run_dir(),
        run_id="bench",
        telemetry=hook,
    )
    pool.start()
    times: list[float] = []
    try:
        for _ in range(KILLS):
            hook.event.clear()
            victim = pool.stats()["bridges"][0]["pid"]
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            if not hook.event.wait(10):
                raise SystemExit(f"{method}: no replacement within 10 s")
            times.append(time.monotonic() - killed)
            deadline = time.monotonic() + 5
            while pool.stats()["available"] < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        pool.close(2.0)
    return times


def main() -> None:
    began = time.monotonic()
    print(
        f"snakepit-celery bridge pool benchmark "
        f"(python {sys.version.split()[0]}, grpcio {grpc.__version__})\n"
    )
    print("Start-up until every bridge reports SERVING (seconds)")
    print(f"{'bridges':>8} {'sequential':>11} {'concurrent':>11} {'preloaded':>10}")
    for n in SIZES:
        seq = start_sequential(n)
        con = start_pool(n, "spawn")
        pre = start_pool(n, "preload")
        print(f"{n:>8} {seq:>11.3f} {con:>11.3f} {pre:>10.3f}")
    print("(preloaded includes starting the zygote, which imports grpc and the handler once)\n")

    print(f"Ping through the pool vs raw gRPC ({ROUNDS} interleaved rounds of {ROUND_SECONDS} s, median)")
    print(
        f"{'':30} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'raw1/this':>10} {'same-bridges raw/this':>22}"
    )
    for name, rate, p50, p99, ratio, matched in throughput_rows():
        same = f"{matched:.2f}x" if matched is not None else ""
        print(f"{name:30} {rate:>9.0f} {p50:>8.3f} {p99:>8.3f} {ratio:>9.2f}x {same:>22}")
    print(
        "(raw1/this: raw calls/s to one bridge over this row's, same threads; same-bridges raw/this:\n"
        " the raw call spread over the same bridges as the pool; 1.00x = no overhead, target < 1.15x.\n"
        " Raw calls may pipeline several calls on one bridge; the pool gives a bridge one call at a time.)\n"
    )

    print(f"Replacement of a SIGKILLed idle bridge, until its successor serves (s, {KILLS} kills)")
    for method in ("spawn", "preload"):
        times = replacement(method)
        print(f"{method:>8}: median {statistics.median(times):.3f}  max {max(times):.3f}")
    print(f"\ntotal benchmark time {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    try:
        main()
    finally:
        import shutil

        shutil.rmtree(BASE, ignore_errors=True)

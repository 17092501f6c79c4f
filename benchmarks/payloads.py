"""Big binary payloads: ``execute("echo")`` of 1 KiB to 50 MiB of bytes beside its floor, one run.

For each size, the round trip ``execute.delay("echo", {"data": b}).get()`` on
one worker with one Python bridge (a private Redis is broker, result backend
and snakepit Redis unless SNAKEPIT_BROKER_URL is set), checked equal to what
was sent, with:

* time (median of the runs) and MB/s (the payload's size over that time);
* the peak RSS growth of the worker process and of its bridge during one call
  (the kernel's high-water mark, reset before the call: ``/proc/PID/clear_refs``),
  on a second, identical worker run with ``MALLOC_MMAP_THRESHOLD_`` fixed at
  128 KiB, so that a buffer an earlier call freed into the heap cannot hide a
  later call's copies (the timed worker keeps glibc's defaults);

beside the floor measured in the same run: the same bytes written to Redis and
read back twice (there and back), plus one bare gRPC echo of them to a server
that answers the arguments as they came (``handlers/grpc_echo.py``; no
snakepit code). The ratio is the round trip's time over the floor's.

Targets (issue 15): at 10 MiB and 50 MiB the round trip takes at most 2x the
floor, and peak memory grows by at most 4x the payload.

    .venv/bin/python benchmarks/payloads.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis
from celery import Celery

from snakepit_celery import PoolConfig, SnakepitConfig, install
from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.engine import grpcenv
from snakepit_celery.integration.workerproc import WorkerProcess

HERE = Path(__file__).resolve().parent
KIB, MIB = 1024, 1024 * 1024
SIZES = (KIB, MIB, 10 * MIB, 50 * MIB)
#: Room over the largest payload for the pool's limit (JSON around it, a result's envelope).
LIMIT = 128 * MIB


def make_app(broker: str, backend: str, prefix: str) -> Celery:
    app = Celery("bench", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(task_default_queue=f"{prefix}.default", control_exchange=f"{prefix}.control")
    pools = (PoolConfig(size=1, max_payload_bytes=LIMIT),)
    install(app, SnakepitConfig(pools=pools, queue_prefix=prefix))
    return app


if "BENCH_PREFIX" in os.environ:  # the worker side: celery -A payloads worker
    app = make_app(os.environ["BENCH_BROKER"], os.environ["BENCH_BACKEND"], os.environ["BENCH_PREFIX"])


def _reset_peak(pid: int) -> int:
    """Reset the high-water mark of ``pid``'s resident memory; its RSS now, in bytes."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return int(psutil.Process(pid).memory_info().rss)


def _peak(pid: int) -> int:
    """The high-water mark of ``pid``'s resident memory since the last reset, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * KIB
    raise RuntimeError(f"no VmHWM for pid {pid}")


def timed(call: Callable[[], Any], runs: int) -> float:
    """Median seconds of ``runs`` calls of ``call``."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def floor_call(client: redis.Redis, stub: Any, payload: bytes) -> Callable[[], None]:
    """The floor: the bytes to Redis and back twice, and one bare gRPC echo of them."""
    from snakepit_bridge._proto import bridge_pb2

    key = f"bench-floor:{uuid.uuid4().hex}"

    def call() -> None:
        for _ in range(2):  # there (caller -> worker) and back (worker -> caller)
            client.set(key, payload)
            if len(client.get(key) or b"") != len(payload):
                raise RuntimeError("Redis answered other bytes")
        request = bridge_pb2.ExecuteRequest(
            command="echo", args=bridge_pb2.Payload(json=b"{}", blobs=[payload])
        )
        if stub(request, timeout=120).result.blobs[0] != payload:
            raise RuntimeError("the gRPC echo answered other bytes")
        client.delete(key)

    return call


def echo_call(execute: Any, payload: bytes) -> Callable[[], None]:
    def call() -> None:
        echoed = execute.delay("echo", {"data": payload}).get(timeout=300)["echoed"]["data"]
        if echoed != payload:
            raise RuntimeError(f"echo answered {len(echoed)} other bytes for {len(payload)}")

    return call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="round trips per size (3 at 50 MiB)")
    ns = parser.parse_args()

    with ExitStack() as stack:
        broker = os.environ.get("SNAKEPIT_BROKER_URL")
        backend = os.environ.get("SNAKEPIT_RESULT_BACKEND") or os.environ.get("SNAKEPIT_REDIS_URL")
        if not broker or not backend:
            server = stack.enter_context(EmbeddedRedis())
            broker, backend = broker or server.url(0), backend or server.url(1)
        timing = start_worker(stack, broker, backend, {})
        # NOTE: glibc raises its mmap threshold after a big free, and then keeps later big
        # buffers in the heap, where a high-water mark no longer sees them: with a fixed
        # threshold every call's copies show in the peak (but each costs page faults, so
        # this worker is measured for memory only).
        memory = start_worker(stack, broker, backend, {"MALLOC_MMAP_THRESHOLD_": str(128 * KIB)})
        client = redis.Redis.from_url(backend)
        stack.callback(client.close)
        stub = start_floor(stack)

        rows = []
        for size in SIZES:
            payload = os.urandom(size)
            runs = 3 if size >= 50 * MIB else ns.runs
            echo, floor = echo_call(timing.execute, payload), floor_call(client, stub, payload)
            echo(), floor()  # warm-up: connections, buffers
            echo_s, floor_s = timed(echo, runs), timed(floor, runs)
            probe = echo_call(memory.execute, payload)
            probe()
            base = {pid: _reset_peak(pid) for pid in (memory.pid, memory.bridge)}
            probe()
            growth = {pid: max(0, _peak(pid) - rss) for pid, rss in base.items()}
            rows.append((size, echo_s, floor_s, growth[memory.pid], growth[memory.bridge]))

    print(
        f"Big payloads: execute('echo') of bytes, 1 Python bridge, broker {broker.split('://')[0]}, one run"
    )
    print_table(rows)
    return 0


@dataclass
class BenchWorker:
    execute: Any
    pid: int
    bridge: int


def start_worker(stack: ExitStack, broker: str, backend: str, extra_env: dict[str, str]) -> BenchWorker:
    """A worker of its own prefix (its own queue) with one Python bridge, stopped with ``stack``."""
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    app = make_app(broker, backend, prefix)
    stack.callback(app.close)
    hostname = f"{prefix}@{socket.gethostname()}"
    env = {"BENCH_BROKER": broker, "BENCH_BACKEND": backend, "BENCH_PREFIX": prefix, **extra_env}
    argv = ["-A", "payloads", "worker", "-n", hostname, "--loglevel", "WARNING", "--without-mingle"]
    worker = stack.enter_context(WorkerProcess([*argv, "--without-gossip"], env=env, cwd=str(HERE)))
    worker.wait_ready(app, hostname)
    bridge = next(
        p.pid
        for p in psutil.Process(worker.pid).children(recursive=True)
        if "snakepit_bridge" in " ".join(p.cmdline())
    )
    return BenchWorker(app.tasks["snakepit.execute"], worker.pid, bridge)


def start_floor(stack: ExitStack) -> Any:
    """Start the ``handlers/grpc_echo.py`` server (ended with ``stack``); its Execute stub."""
    import grpc
    from snakepit_bridge._proto import bridge_pb2_grpc

    run_dir = tempfile.mkdtemp(prefix="spfloor-")
    stack.callback(shutil.rmtree, run_dir, ignore_errors=True)
    env = dict(os.environ)
    grpcenv.for_python_bridge(env)  # the gRPC settings of a Python bridge
    path = os.path.join(run_dir, "floor.sock")
    server = subprocess.Popen(
        [sys.executable, str(HERE / "handlers" / "grpc_echo.py"), path],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    stack.callback(_end, server)
    assert server.stdout is not None
    if server.stdout.readline().strip() != "serving":
        raise RuntimeError(f"handlers/grpc_echo.py did not start (exit status {server.poll()})")
    options = [("grpc.max_send_message_length", LIMIT), ("grpc.max_receive_message_length", LIMIT)]
    channel = grpc.insecure_channel(f"unix:{path}", options=options)
    stack.callback(channel.close)
    return bridge_pb2_grpc.BridgeStub(channel).Execute


def _end(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"


def print_table(rows: list[tuple[int, float, float, int, int]]) -> None:
    """One line per size: the round trip, its floor, the ratio, the memory growth."""
    table = [
        (
            "payload",
            'execute("echo")',
            "MB/s",
            "floor",
            "vs floor",
            "worker peak RSS +",
            "bridge peak RSS +",
            "(x payload)",
        )
    ]
    met = True
    for size, echo_s, floor_s, worker_growth, bridge_growth in rows:
        ratio = echo_s / floor_s
        times_payload = max(worker_growth, bridge_growth) / size
        if size >= 10 * MIB:
            met = met and ratio <= 2.0 and times_payload <= 4.0
        table.append(
            (
                _size(size),
                f"{echo_s * 1000:.1f} ms",
                f"{size / echo_s / 1e6:.1f}",
                f"{floor_s * 1000:.1f} ms",
                f"{ratio:.2f}x",
                f"{worker_growth / MIB:.1f} MiB",
                f"{bridge_growth / MIB:.1f} MiB",
                f"{times_payload:.1f}x" if size >= MIB else "",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(
        "floor: the bytes written to Redis and read back twice, plus one bare gRPC echo of them; "
        "(x payload): the larger growth over the payload's size"
    )
    print("targets (<= 2x the floor, <= 4x the payload at 10 and 50 MiB) " + ("met" if met else "NOT met"))


if __name__ == "__main__":
    sys.exit(main())

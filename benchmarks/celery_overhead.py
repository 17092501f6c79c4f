"""What snakepit adds to a Celery task: plain no-op task vs ``execute("ping")``, one run.

Both run on the same worker (threads pool, same concurrency, events on), the
same broker and result backend, interleaved so that a change of machine load
hits both alike. The run is made on each broker in turn: a private Redis, then
RabbitMQ (``SNAKEPIT_TEST_AMQP_URL``, by default guest on 127.0.0.1; skipped,
saying so, when none answers); the result backend is the private Redis.
SNAKEPIT_BROKER_URL (with SNAKEPIT_RESULT_BACKEND) measures one broker of your own.

* throughput: 10,000 tasks of each, sent as groups in alternating rounds,
  timed until the round's last result;
* latency: sequential ``delay().get()``, alternating, p50 and p99.

Targets (issue 15), against the floor below measured in the same run, on both
brokers: throughput >= 0.95 of the bare gRPC call's; p50 <= bare gRPC + 0.25 ms.

A third task, measured alike in the same rounds, is the floor of the design:
a hand-written Celery task that makes one bare grpcio call to a server that
answers a constant (``handlers/grpc_floor.py``, as many as there are bridges,
lent most recently used first, as the pool lends bridges; no snakepit code on
either side) and returns the decoded answer. What it costs over the no-op,
any Celery task pays that calls another process over gRPC; what ``execute``
costs over it is snakepit's own code (checkout, encoding, the bridge's
command dispatch, stats).

    .venv/bin/python benchmarks/celery_overhead.py [--tasks 10000] [--calls 1000] [--brokers redis,amqp]

``--grpc-experiments ""`` runs the worker and its bridges on gRPC's own
defaults instead of snakepit's setting (see ``snakepit_celery.engine.grpcenv``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

from celery import Celery, group, shared_task

from snakepit_celery import PoolConfig, SnakepitConfig, install
from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.engine import grpcenv
from snakepit_celery.integration.workerproc import WorkerProcess

HERE = Path(__file__).resolve().parent


@shared_task(name="bench.noop")
def noop() -> None:
    """The plain Celery task: no bridge, nothing to do."""


#: Stubs of the floor servers not in use, the most recently used last.
_floor_free: list[Any] = []
_floor_ready = threading.Condition()
_floor_opened = False


@shared_task(name="bench.grpc_call")
def grpc_call() -> Any:
    """The floor: one bare grpcio call to ``handlers/grpc_floor.py``, its answer decoded.

    The call borrows the server used last, as the pool lends the bridge used
    last: sequential calls go to one warm server, concurrent ones to a server
    each. grpc is imported here, not at the top: the worker must first import
    it the way its snakepit step does (``grpcenv``), as its bridges' calls run
    on that setting too.
    """
    global _floor_opened
    with _floor_ready:
        if not _floor_opened:
            import grpc
            from snakepit_bridge._proto import bridge_pb2, bridge_pb2_grpc

            request = bridge_pb2.ExecuteRequest(command="ping", args=bridge_pb2.Payload(json=b"{}"))
            for path in os.environ["BENCH_FLOOR_SOCKETS"].split(","):
                channel = grpc.insecure_channel(f"unix:{path}")
                _floor_free.append((bridge_pb2_grpc.BridgeStub(channel).Execute, request))
            _floor_opened = True
        while not _floor_free:  # more worker threads than servers: wait, as for a bridge
            _floor_ready.wait()
        stub = _floor_free.pop()
    try:
        call, request = stub
        return json.loads(call(request, timeout=30).result.json)
    finally:
        with _floor_ready:
            _floor_free.append(stub)
            _floor_ready.notify()


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


def throughputs(sigs: list[Any], count: int) -> list[float]:
    """Tasks per second of each signature, ``count`` tasks each, in alternating rounds."""
    elapsed = [0.0] * len(sigs)
    per_round = max(1, count // ROUNDS)
    for _ in range(ROUNDS):
        for i, sig in enumerate(sigs):
            elapsed[i] += timed_group(sig, per_round)
    return [per_round * ROUNDS / e for e in elapsed]


def latencies(calls: list[tuple[Any, tuple[Any, ...]]], count: int) -> list[list[float]]:
    """Milliseconds of sequential ``delay().get()``, taking the calls in turn."""
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(count):
        for i, (task, args) in enumerate(calls):
            started = time.perf_counter()
            task.delay(*args).get(timeout=30)
            samples[i].append((time.perf_counter() - started) * 1000)
    return samples


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


#: The RabbitMQ the run's second half uses (the integration tests' default too).
AMQP_URL = os.environ.get("SNAKEPIT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per throughput run")
    parser.add_argument("--calls", type=int, default=1_000, help="sequential calls per latency run")
    parser.add_argument("--pool-size", type=int, default=2, help="bridges (and worker threads)")
    parser.add_argument("--concurrency", type=int, default=None, help="worker threads (default: install's)")
    parser.add_argument("--brokers", default="redis,amqp", help="brokers to measure on, in turn")
    parser.add_argument(
        "--grpc-experiments", default=None, help="GRPC_EXPERIMENTS for the worker (default: snakepit's)"
    )
    ns = parser.parse_args()

    verdicts = []
    with ExitStack() as stack:
        own_broker = os.environ.get("SNAKEPIT_BROKER_URL")
        backend = os.environ.get("SNAKEPIT_RESULT_BACKEND") or os.environ.get("SNAKEPIT_REDIS_URL")
        redis = None
        if not own_broker or not backend:
            redis = stack.enter_context(EmbeddedRedis())
            backend = backend or redis.url(1)
        brokers = [own_broker] if own_broker else []
        for kind in [] if own_broker else ns.brokers.split(","):
            if kind == "redis":
                assert redis is not None
                brokers.append(redis.url(0))
            elif kind == "amqp":
                if not _amqp_answers(AMQP_URL):
                    print(f"RabbitMQ: none answers at {AMQP_URL.split('@')[-1]}; its half is skipped")
                    continue
                brokers.append(AMQP_URL)
            else:
                parser.error(f"--brokers: {kind!r} is neither redis nor amqp")
        sockets = ",".join(start_floors(stack, ns.pool_size, ns.grpc_experiments))
        for broker in brokers:
            tps, lats = measure(ns, broker, backend, sockets)
            print(
                f"Celery overhead: {ns.pool_size} bridges, threads pool"
                + (f" of {ns.concurrency}" if ns.concurrency else "")
                + ", "
                + f"broker {broker.split('://')[0]}, one run, interleaved"
                + ("" if ns.grpc_experiments is None else f", GRPC_EXPERIMENTS={ns.grpc_experiments!r}")
            )
            verdicts.append(print_table(ns.tasks, tps, lats))
            print()
    print("targets met" if verdicts and all(verdicts) else "targets NOT met")
    return 0


def measure(
    ns: argparse.Namespace, broker: str, backend: str, sockets: str
) -> tuple[list[float], list[list[float]]]:
    """One worker on ``broker``: the three tasks' throughputs and latency samples."""
    with ExitStack() as stack:
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        app = make_app(broker, backend, prefix, ns.pool_size)
        stack.callback(app.close)
        if broker.startswith("amqp"):
            stack.callback(_delete_amqp_queues, broker, prefix)
        hostname = f"{prefix}@{socket.gethostname()}"
        env = {"BENCH_BROKER": broker, "BENCH_BACKEND": backend, "BENCH_PREFIX": prefix}
        env["BENCH_POOL_SIZE"] = str(ns.pool_size)
        env["BENCH_FLOOR_SOCKETS"] = sockets
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

        plain, floor, ping = (
            app.tasks[name] for name in ("bench.noop", "bench.grpc_call", "snakepit.execute")
        )
        sigs = [plain.s(), floor.s(), ping.s("ping", {})]
        throughputs(sigs, 500)  # warm-up: connections, bridges, caches
        tps = throughputs(sigs, ns.tasks)
        lats = latencies([(plain, ()), (floor, ()), (ping, ("ping", {}))], ns.calls)
        return tps, lats


def _amqp_answers(url: str) -> bool:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


def _delete_amqp_queues(url: str, prefix: str) -> None:
    """The run's queues and exchanges on the shared RabbitMQ (names with its prefix)."""
    from kombu import Connection

    queues = [f"{prefix}.default", f"{prefix}.pool.python"]
    exchanges = [*queues, f"{prefix}.control.pidbox", f"reply.{prefix}.control.pidbox"]
    with Connection(url) as conn:
        for name, delete in [(q, "queue_delete") for q in queues] + [
            (e, "exchange_delete") for e in exchanges
        ]:
            channel = conn.channel()
            with suppress(Exception):  # already gone
                getattr(channel, delete)(name)
            with suppress(Exception):  # the broker closed the channel after a failed delete
                channel.close()


def start_floors(stack: ExitStack, count: int, experiments: str | None) -> list[str]:
    """Start ``count`` ``handlers/grpc_floor.py`` servers (ended with ``stack``); their sockets."""
    run_dir = tempfile.mkdtemp(prefix="spfloor-")
    stack.callback(shutil.rmtree, run_dir, ignore_errors=True)
    env = dict(os.environ)
    if experiments is None:
        grpcenv.for_python_bridge(env)  # the gRPC settings of a Python bridge
    else:
        env[grpcenv.VARIABLE] = experiments
    paths = [os.path.join(run_dir, f"floor.{i}.sock") for i in range(count)]
    servers = []
    for path in paths:
        server = subprocess.Popen(
            [sys.executable, str(HERE / "handlers" / "grpc_floor.py"), path],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        stack.callback(_end, server)
        servers.append(server)
    for server in servers:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "serving":
            raise RuntimeError(f"handlers/grpc_floor.py did not start (exit status {server.poll()})")
    return paths


def _end(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def print_table(tasks: int, tps: list[float], lats: list[list[float]]) -> bool:
    """The three tasks side by side; the targets compare ``execute`` with the bare gRPC call.
    Returns whether they are met."""
    p50 = [percentile(samples, 50) for samples in lats]
    p99 = [percentile(samples, 99) for samples in lats]
    (tp_plain, tp_floor, tp_ping) = tps
    vs_floor = tp_ping / tp_floor
    rows = [
        (
            "",
            "plain Celery no-op",
            "bare gRPC call",
            'execute("ping")',
            "execute vs no-op",
            "execute vs bare gRPC",
            "target",
        ),
        (
            f"throughput, {tasks} tasks",
            f"{tp_plain:,.0f}/s",
            f"{tp_floor:,.0f}/s",
            f"{tp_ping:,.0f}/s",
            f"{tp_ping / tp_plain:.2f}x",
            f"{vs_floor:.2f}x",
            ">= 0.95x",
        ),
    ]
    for name, values, target in (("latency p50", p50, "<= +0.25 ms"), ("latency p99", p99, "")):
        rows.append(
            (
                name,
                *(f"{v:.2f} ms" for v in values),
                f"{values[2] - values[0]:+.2f} ms",
                f"{values[2] - values[1]:+.2f} ms",
                target,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(
        f"bare gRPC call: one grpcio call from a Celery task to a server answering a constant, "
        f"{p50[1] - p50[0]:+.2f} ms over the no-op at p50 (no snakepit code)"
    )
    met = vs_floor >= 0.95 and p50[2] - p50[1] <= 0.25
    print("targets met on this broker" if met else "targets NOT met on this broker")
    return met


if __name__ == "__main__":
    sys.exit(main())

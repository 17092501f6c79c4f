"""``snakepit-celery demo`` (and ``make demo``): the showcase, end to end, then nothing left.

Starts a private Redis unless ``SNAKEPIT_BROKER_URL``/``SNAKEPIT_REDIS_URL``
name one, a real worker subprocess hosting the config's pools, and runs: a
ping, a compute, a chord over 20 compute calls, a session keeping its state on
one bridge, a stream drawn as a live progress bar (rich), a Node.js call when
Node.js and the Node.js bridge's packages are there (else a line saying why it
is skipped), and a crash recovery (a bridge killed by its pid; the next call
still succeeds). Everything it started is stopped on the way out, also on
Ctrl-C or SIGTERM. Queue names get a private prefix, so a demo against a shared
broker touches no one else's queues.

Without ``SNAKEPIT_CONFIG`` the worker hosts the default ``python`` pool and,
when Node.js can run, a ``node`` pool of one bridge; with it, the file's pools
(the Node.js call then needs a pool whose adapter is ``node``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

from celery import chord, shared_task

from snakepit_celery.config import PoolConfig, SnakepitConfig
from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.errors import SnakepitError
from snakepit_celery.integration.workerproc import WorkerFailed, WorkerProcess

__all__ = ["run_demo", "total"]

#: Seconds each demo step may take before the demo gives up.
STEP_TIMEOUT = 60.0
#: Exit status after Ctrl-C or SIGTERM (everything was still stopped).
EXIT_INTERRUPTED = 130
#: The stream step: rows, rows per chunk, seconds between chunks (a bar that visibly moves).
STREAM_ROWS, STREAM_CHUNK_ROWS, STREAM_DELAY = 20_000, 500, 0.05


@shared_task(name="snakepit.demo.total")  # type: ignore[untyped-decorator]
def total(results: list[dict[str, Any]]) -> int | float:
    """The chord's callback: the sum of the ``result`` fields of compute calls."""
    summed: int | float = sum(r["result"] for r in results)
    return summed


def _say(label: str, text: str) -> None:
    print(f"{label:<10} {text}", flush=True)


def _interrupt_once(signum: int, frame: FrameType | None) -> None:
    # The first signal unwinds the demo (cleanup runs in `finally`); later ones
    # are ignored so they cannot cut the cleanup short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def run_demo() -> int:
    """Run the demo; 0 when every step succeeded."""
    previous = {s: signal.signal(s, _interrupt_once) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as stack:
            _run(stack)
        _say("done", "worker and redis stopped; nothing left running")
        return 0
    except KeyboardInterrupt:
        print("interrupted: worker and redis stopped", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except (SnakepitError, WorkerFailed) as exc:
        print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _node_unavailable() -> str | None:
    """Why a Node.js pool cannot start here (the adapter's own words), or None when it can."""
    from snakepit_celery.engine.adapters.node import NodeAdapter

    try:
        NodeAdapter().command(PoolConfig(name="node", adapter="node"))
    except SnakepitError as exc:
        return str(exc).split(": ", 1)[-1]
    return None


def _demo_config(stack: contextlib.ExitStack) -> tuple[dict[str, str], str | None]:
    """The environment that gives the worker its pools, and why the Node.js call is skipped
    (None: it is not). The caller's config is read from the same environment."""
    if os.environ.get("SNAKEPIT_CONFIG"):
        config = SnakepitConfig.from_env()
        if any(p.adapter == "node" for p in config.pools):
            return {}, None
        return {}, f"the pools of SNAKEPIT_CONFIG={os.environ['SNAKEPIT_CONFIG']} have no node adapter"
    reason = _node_unavailable()
    if reason is not None:
        return {}, reason
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="snakepit-demo-")))
    path = folder / "demo.toml"
    path.write_text('[pools.python]\n\n[pools.node]\nadapter = "node"\nsize = 1\n')
    return {"SNAKEPIT_CONFIG": str(path)}, None


def _run(stack: contextlib.ExitStack) -> None:
    from snakepit_celery.api import create_app

    pools_env, node_skipped = _demo_config(stack)
    config = SnakepitConfig.from_env({**os.environ, **pools_env})
    broker = config.broker_url or config.redis_url
    backend = config.result_backend or config.redis_url
    if backend is None and broker and broker.startswith(("redis://", "rediss://")):
        backend = broker
    if broker is None or backend is None:
        redis = stack.enter_context(EmbeddedRedis())
        assert redis.process is not None
        _say("redis", f"embedded redis-server on {redis.url()} (pid {redis.process.pid})")
        broker, backend = broker or redis.url(0), backend or redis.url(1)
    prefix = f"demo-{uuid.uuid4().hex[:8]}"
    config = dataclasses.replace(config, broker_url=broker, result_backend=backend, queue_prefix=prefix)
    app = create_app(config, main="snakepit_demo")
    stack.callback(app.close)

    hostname = f"{prefix}@{socket.gethostname()}"
    env = {
        "SNAKEPIT_BROKER_URL": broker,
        "SNAKEPIT_RESULT_BACKEND": backend,
        "SNAKEPIT_QUEUE_PREFIX": prefix,
        **pools_env,
    }
    argv = [sys.executable, "-m", "snakepit_celery.cli", "worker", "--include", __name__]
    worker = WorkerProcess(argv=[*argv, "-n", hostname, "--loglevel", "WARNING"], env=env)
    stack.enter_context(worker)
    started = time.monotonic()
    worker.wait_ready(app, hostname, timeout=STEP_TIMEOUT)
    pools = ", ".join(f"{p.name} ({p.size} {p.adapter} bridge{'s' * (p.size != 1)})" for p in config.pools)
    _say("worker", f"{hostname} (pid {worker.pid}) ready in {time.monotonic() - started:.1f}s: {pools}")

    execute = app.tasks["snakepit.execute"]
    started = time.monotonic()
    pong = execute.delay("ping", {}).get(timeout=STEP_TIMEOUT)
    _say("ping", f"{pong['message']} from bridge pid {pong['pid']} ({_ms(started)})")

    started = time.monotonic()
    added = execute.delay("compute", {"operation": "add", "a": 5, "b": 3}).get(timeout=STEP_TIMEOUT)
    _say("compute", f"5 + 3 = {added['result']} ({_ms(started)})")

    started = time.monotonic()
    header = [execute.s("compute", {"operation": "multiply", "a": i, "b": i}) for i in range(1, 21)]
    callback = app.tasks[total.name].s().set(queue=config.queue_name(config.default_pool))
    squares = chord(header)(callback).get(timeout=STEP_TIMEOUT)
    _say("chord", f"20 compute calls, sum of 1..20 squared = {squares} ({_ms(started)})")

    _session(app, prefix)
    _stream(app)
    node = next((p.name for p in config.pools if p.adapter == "node"), None)
    if node is None:
        _say("node", f"skipped: {node_skipped}")
    else:
        _node_call(app, node)
    _crash_recovery(app, hostname, config)


def _session(app: Any, prefix: str) -> None:
    """Three calls of one session: the bridge keeps its counter between them."""
    call = app.tasks["snakepit.execute_in_session"]
    session_id = f"{prefix}-user_1"
    started = time.monotonic()
    values = [call.delay(session_id, "set_counter", {"value": 1}).get(timeout=STEP_TIMEOUT)["value"]]
    for _ in range(2):
        values.append(call.delay(session_id, "increment_counter", {}).get(timeout=STEP_TIMEOUT)["value"])
    pids = {call.delay(session_id, "ping", {}).get(timeout=STEP_TIMEOUT)["pid"] for _ in range(2)}
    counters = " -> ".join(str(v) for v in values)
    where = f"bridge pid {pids.pop()}" if len(pids) == 1 else f"bridges {sorted(pids)}"
    _say("session", f"{session_id}: counter {counters}, every call on {where} ({_ms(started)})")


def _stream(app: Any) -> None:
    """A stream command's chunks drawn live as a progress bar (once, at the end, off a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn

    from snakepit_celery.streaming.caller import stream

    args = {"total_rows": STREAM_ROWS, "chunk_size": STREAM_CHUNK_ROWS, "delay": STREAM_DELAY}
    started = time.monotonic()
    chunks = 0
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn())
    with (
        Progress(*columns, console=Console(file=sys.stdout)) as progress,
        stream("process_large_dataset", args, app=app, timeout=STEP_TIMEOUT) as s,
    ):
        bar = progress.add_task("rows", total=STREAM_ROWS)
        for chunk in s:
            chunks += 1
            progress.update(bar, completed=chunk["processed_rows"])
    percent = chunk["progress_percent"]
    _say("stream", f"{chunks} chunks, {chunk['total_processed']} rows, {percent:.0f}% ({_ms(started)})")


def _node_call(app: Any, pool: str) -> None:
    execute = app.tasks["snakepit.execute"]
    started = time.monotonic()
    info = execute.apply_async(("info", {}), kwargs={"pool": pool}).get(timeout=STEP_TIMEOUT)
    product = execute.apply_async(
        ("compute", {"operation": "multiply", "a": 6, "b": 7}), kwargs={"pool": pool}
    ).get(timeout=STEP_TIMEOUT)
    version = info.get("runtime_version", "?")
    _say("node", f"Node.js {version} bridge pid {info['pid']}: 6 * 7 = {product['result']} ({_ms(started)})")


def _crash_recovery(app: Any, hostname: str, config: SnakepitConfig) -> None:
    execute = app.tasks["snakepit.execute"]
    pool = _node_stats(app, hostname)["pools"][config.default_pool]
    victim = int(pool["bridges"][0]["pid"])
    _kill_and_wait(victim)
    _say("crash", f"killed bridge pid {victim} with SIGKILL")
    started = time.monotonic()
    # A plain call: the pool never hands out a bridge it can see is dead, whether or not
    # its supervisor has replaced it yet.
    result = execute.delay("compute", {"operation": "sqrt", "a": 144}).get(timeout=STEP_TIMEOUT)
    _say("recovery", f"next call ok: sqrt(144) = {result['result']} ({_ms(started)})")
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        pool = _node_stats(app, hostname)["pools"][config.default_pool]
        pids = [int(b["pid"]) for b in pool["bridges"] if b["pid"] is not None]
        if victim not in pids and len(pids) == pool["size"] == pool["workers"]:
            break
        if time.monotonic() > deadline:
            raise WorkerFailed(f"bridge {victim} was not replaced within {STEP_TIMEOUT}s: {pool}")
        time.sleep(0.1)
    _say("replaced", f"pool {pool['name']}: bridges now {pids}, restarts {pool['restarts']}")


def _kill_and_wait(pid: int) -> None:
    """SIGKILL ``pid`` and return once it has exited, which is a moment after the signal.

    A call sent in that moment reaches the bridge's socket while it still
    lives, and when the bridge then dies the pool cannot tell that call from
    one that was running (``BridgeCrashed``). A pidfd turns readable only when
    the whole process is gone (psutil already calls it a zombie while its
    other threads still tear down, sockets open).
    """
    pidfd = os.pidfd_open(pid)
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(STEP_TIMEOUT * 1000):
            raise WorkerFailed(f"bridge {pid} was still running {STEP_TIMEOUT}s after SIGKILL")
    finally:
        os.close(pidfd)


def _node_stats(app: Any, hostname: str) -> dict[str, Any]:
    replies = app.control.broadcast("snakepit_stats", destination=[hostname], reply=True, timeout=5.0)
    for reply in replies or []:
        if hostname in reply:
            return dict(reply[hostname])
    raise WorkerFailed(f"worker {hostname} did not answer snakepit_stats")


def _ms(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.0f} ms"

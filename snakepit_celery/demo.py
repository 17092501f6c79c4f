"""``snakepit-celery demo`` (and ``make demo``): the showcase, end to end, then nothing left.

Starts a private Redis unless ``SNAKEPIT_BROKER_URL``/``SNAKEPIT_REDIS_URL``
name one, a real worker subprocess hosting the config's pools, and runs: a
ping, a compute, a chord over 20 compute calls, and a crash recovery (a bridge
killed by its pid; the next call still succeeds). Everything it started is
stopped on the way out, also on Ctrl-C or SIGTERM. Queue names get a private
prefix, so a demo against a shared broker touches no one else's queues.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import socket
import sys
import time
import uuid
from types import FrameType
from typing import Any

from celery import chord, shared_task

from snakepit_celery.config import SnakepitConfig
from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.errors import SnakepitError
from snakepit_celery.workerproc import WorkerFailed, WorkerProcess

__all__ = ["run_demo", "total"]

#: Seconds each demo step may take before the demo gives up.
STEP_TIMEOUT = 60.0
#: Exit status after Ctrl-C or SIGTERM (everything was still stopped).
EXIT_INTERRUPTED = 130


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


def _run(stack: contextlib.ExitStack) -> None:
    from snakepit_celery.api import create_app

    config = SnakepitConfig.from_env()
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
    env = {"SNAKEPIT_BROKER_URL": broker, "SNAKEPIT_RESULT_BACKEND": backend, "SNAKEPIT_QUEUE_PREFIX": prefix}
    argv = [sys.executable, "-m", "snakepit_celery.cli", "worker", "--include", __name__]
    worker = WorkerProcess(argv=[*argv, "-n", hostname, "--loglevel", "WARNING"], env=env)
    stack.enter_context(worker)
    started = time.monotonic()
    worker.wait_ready(app, hostname, timeout=STEP_TIMEOUT)
    pools = ", ".join(f"{p.name} ({p.size} {p.adapter} bridges)" for p in config.pools)
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

    _crash_recovery(app, hostname, config)


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

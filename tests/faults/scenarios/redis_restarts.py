"""c: the sessions-and-streams Redis restarting under a running stream; d: the Redis broker
restarting under load."""

from __future__ import annotations

import collections
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from itworkers import WorkerFactory, wait_for

from .calls import Calls, Tally
from .infra import ENV, RestartableRedis, answers_ping, pools, printing_logs


def stream_redis_restart(factory: WorkerFactory, log: Path) -> Tally:
    """A worker on a Redis broker whose sessions and streams live in a Redis of their own;
    that Redis restarts (SIGKILL, empty) while a stream is being read. The reader must end
    (finished, or ``StreamError``) within 30 s; then new calls, a session call and a new
    stream must work on the same worker.

    Facts: ``reader`` (how the running stream ended and when), ``worker_pid_same``."""
    from snakepit_celery import stream

    side = RestartableRedis().start()
    try:
        worker = factory(pools(), broker="redis", env={**ENV, "SNAKEPIT_REDIS_URL": side.url(0)})
        pid = worker.process.pid
        calls = Calls(worker.app, log)
        with printing_logs([worker]):
            chunks: list[Any] = []
            ended: dict[str, Any] = {}

            def read() -> None:
                try:
                    with stream("ping_stream", {"count": 300, "interval": 0.03}, app=worker.app) as s:
                        for chunk in s:
                            chunks.append(chunk)
                    ended.update(outcome="finished", at=time.monotonic())
                except Exception as exc:
                    ended.update(outcome=type(exc).__name__, error=str(exc)[:200], at=time.monotonic())

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            wait_for(lambda: len(chunks) >= 20 or ended, 30, "the stream to be under way")
            side.restart()
            fault_at = time.monotonic()
            reader.join(30)
            reader_ended = ended.get("outcome", "still reading at 30 s")
            # Afterwards: plain calls, a session call, and a new stream, on the same worker.
            after = [calls.sleep(0.05) for _ in range(5)]
            after.append(calls.session_sleep(f"c-{uuid.uuid4().hex[:8]}", 0.05))
            calls.collect(until=time.monotonic() + 30)
            second: dict[str, Any] = {}
            try:
                with stream(
                    "ping_stream", {"count": 20, "interval": 0.01}, app=worker.app, idle_timeout=20
                ) as s:
                    second.update(chunks=sum(1 for _ in s), outcome=s.outcome)
            except Exception as exc:
                second.update(outcome=type(exc).__name__, error=str(exc)[:200])
            tally = calls.tally("sessions/streams Redis restarted under a stream", fault_at, 30)
            # The first stream is a call too: done when it finished, its error class otherwise.
            tally.calls += 2
            for outcome in (reader_ended, second.get("outcome")):
                if outcome in ("finished", "ok"):
                    tally.done += 1
                elif outcome == "still reading at 30 s":
                    tally.stranded += 1
                else:
                    tally.errors[str(outcome)] += 1
            if "at" in ended:
                tally.last_answer = max(tally.last_answer or 0.0, ended["at"] - fault_at)
            tally.facts.update(
                reader=reader_ended,
                reader_after=round(ended["at"] - fault_at, 1) if "at" in ended else None,
                reader_error=ended.get("error"),
                chunks_before_end=len(chunks),
                after_calls=[c.outcome for c in after],
                second_stream=second,
                worker_pid_same=worker.process.alive() and worker.process.pid == pid,
            )
            calls.close()
        return tally
    finally:
        side.stop()


# -- d: the Redis broker restarting under load ---------------------------------------------------


def broker_restart(factory: WorkerFactory, log: Path, *, caller_timeout: float = 15.0) -> Tally:
    """A worker whose broker (and result backend) is a Redis that restarts (SIGKILL, empty)
    with 40 calls sent, some running, the rest queued. Every caller waits with its own
    timeout; none may hang past it. Once the worker answers again, 20 new calls must succeed.

    Facts: ``reconnected_after`` (s until the worker answered a ping), ``after_ok``."""
    broker = RestartableRedis().start()
    try:
        worker = factory(pools(), broker=broker.url(0), env=ENV)
        pid = worker.process.pid
        calls = Calls(worker.app, log)
        with printing_logs([worker]):
            first = [calls.sleep(0.2, timeout=caller_timeout) for _ in range(40)]
            wait_for(lambda: len(calls.log.runs()) >= 6, 30, "calls to be running")
            broker.restart()
            fault_at = time.monotonic()
            wait_for(
                lambda: answers_ping(worker),
                60,
                "the worker to answer again after the broker restarted",
            )
            back_at = time.monotonic()
            after = [calls.sleep(0.05, timeout=30) for _ in range(20)]
            calls.collect(until=time.monotonic() + 30)
            tally = calls.tally("Redis broker restarted under load", fault_at, caller_timeout)
            tally.facts.update(
                reconnected_after=round(back_at - fault_at, 1),
                before=collections.Counter(str(c.outcome) for c in first),
                after=collections.Counter(str(c.outcome) for c in after),
                worker_pid_same=worker.process.alive() and worker.process.pid == pid,
            )
            calls.close()
        return tally
    finally:
        broker.stop()

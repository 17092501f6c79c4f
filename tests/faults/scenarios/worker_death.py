"""a, b: workers SIGKILLed with calls in flight."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from itworkers import WorkerFactory, wait_for

from .calls import Calls, Tally
from .infra import ENV, RECOVERY_BOUND, pair, pools, printing_logs


def worker_sigkill(
    factory: WorkerFactory, broker: str, log: Path, *, both: bool = False, bound: float = RECOVERY_BOUND
) -> Tally:
    """80 ``sleep(0.25)`` calls to a pool served by two workers; 1.5 s later one worker (or,
    with ``both``, both, and then a fresh one is started) is SIGKILLed. Callers wait until
    ``bound`` s after the fault (after the fresh worker is ready, with ``both``).

    Facts: ``started_on_dead`` (tokens that had begun on a killed worker's bridge),
    ``wrong`` (callers whose answer is not the one the issue demands: ``WorkerLost`` for
    a call begun on a dead worker and not answered before, a result for any other)."""
    workers = pair(factory, broker)
    a, b = workers
    victims = [a, b] if both else [a]
    calls = Calls(a.app, log)
    with printing_logs(workers):
        dead_pids = {pid for w in victims for pid in w.bridge_pids()}
        first = time.monotonic()
        for _ in range(80):
            calls.sleep(0.25)
        # 1.5 s after sending, and once a victim has a call running (else nothing is tested).
        wait_for(
            lambda: time.monotonic() >= first + 1.5 and calls.log.running(dead_pids),
            30,
            "a call running on the worker to kill",
        )
        for victim in victims:
            victim.process.signal(signal.SIGKILL)
        fault_at = time.monotonic()
        for victim in victims:
            victim.process.wait(10)
        ready_at = fault_at
        if both:
            fresh = factory(
                pools(),
                broker=a.broker,
                name="c",
                prefix=a.prefix,
                env={**ENV, "IT_BACKEND": a.env["IT_BACKEND"]},
            )
            workers.append(fresh)
            ready_at = time.monotonic()
        calls.collect(until=ready_at + bound)
        tally = calls.tally(
            f"{'both workers' if both else 'a worker'} SIGKILLed ({broker})",
            fault_at,
            ready_at - fault_at + bound,
        )
        runs = calls.log.runs()
        started_on_dead = {t for t, pids in runs.items() if pids[0] in dead_pids}
        wrong = []
        for call in calls.calls:
            if call.outcome is None:
                continue
            if call.outcome == "ok" or (call.outcome == "WorkerLost" and call.token in started_on_dead):
                continue
            wrong.append((call.token, call.outcome, str(call.value)[:200]))
        tally.facts.update(
            started_on_dead=len(started_on_dead),
            wrong=wrong,
            fresh_worker_start=round(ready_at - fault_at, 1),
        )
        calls.close()
    return tally

"""f: a session owner frozen past its lease."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path

from itworkers import WorkerFactory, wait_for

from .calls import Calls, Tally
from .infra import LEASE_TTL, pair, printing_logs


def frozen_owner(factory: WorkerFactory, broker: str, log: Path) -> Tally:
    """Two workers; a session's calls sent one every 0.1 s; the session's owner is frozen
    (SIGSTOP) until the other worker has taken the session over, then woken (SIGCONT)
    while calls keep coming. Every call must run once, in send order, one at a time.

    Facts: ``out_of_order``, ``overlaps`` (a call started before the one before it ended),
    ``owner_switches`` (bridges the session ran on, in order), ``took_over_after``."""
    import redis

    from snakepit_celery.sessions.lease import LeaseTable

    workers = pair(factory, broker)
    a, b = workers
    calls = Calls(a.app, log)
    sid = f"frozen-{uuid.uuid4().hex[:8]}"
    sessions = redis.Redis.from_url(a.env["IT_BACKEND"])
    leases = LeaseTable(sessions, a.prefix)
    with printing_logs(workers):
        calls.session_sleep(sid, 0.05).result.get(timeout=30)
        owner_id = leases.route_of(sid).get("owner", "")
        owner, other = (a, b) if owner_id.startswith(a.hostname + "#") else (b, a)
        stop = threading.Event()

        def send() -> None:
            while not stop.wait(0.1):
                calls.session_sleep(sid, 0.05)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            wait_for(lambda: len(calls.calls) >= 10, 10, "calls under way")
            owner.process.signal(signal.SIGSTOP)
            fault_at = time.monotonic()
            try:
                wait_for(
                    lambda: leases.route_of(sid).get("owner", "").startswith(other.hostname + "#"),
                    LEASE_TTL * 4 + 10,
                    "the other worker to take the session over",
                )
                took_over = time.monotonic() - fault_at
            except AssertionError:
                took_over = None
            finally:
                owner.process.signal(signal.SIGCONT)
            woke = len(calls.calls)
            wait_for(lambda: len(calls.calls) >= woke + 20, 10, "calls after the owner woke")
        finally:
            stop.set()
            sender.join(5)
        calls.collect(until=time.monotonic() + 30)
        tally = calls.tally(f"session owner frozen past its lease ({broker})", fault_at, 30)
        lines = calls.log.lines()
        sent = [c.token for c in calls.calls]
        starts = [t for m, t, _ in lines if m == "S"]
        first_starts = list(dict.fromkeys(starts))
        ran = set(first_starts)
        overlaps = sum(1 for i in range(1, len(lines)) if lines[i][0] == "S" and lines[i - 1][0] == "S")
        pids = [pid for m, _, pid in lines if m == "S"]
        segments = [pid for i, pid in enumerate(pids) if i == 0 or pid != pids[i - 1]]
        tally.facts.update(
            took_over_after=None if took_over is None else round(took_over, 1),
            out_of_order=sum(
                1 for x, y in zip(first_starts, [t for t in sent if t in ran], strict=True) if x != y
            ),
            run_order=_ranges([sent.index(t) for t in first_starts]),
            overlaps=overlaps,
            owner_switches=segments,
            ran=len(ran),
        )
        calls.close()
        sessions.close()
    return tally


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 7, 8, 3]`` as ``"0-2 7-8 3"``: a run order, readable at a glance."""
    parts: list[list[int]] = []
    for n in numbers:
        if parts and n == parts[-1][1] + 1:
            parts[-1][1] = n
        else:
            parts.append([n, n])
    return " ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)

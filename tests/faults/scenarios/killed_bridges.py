"""e: bridges killed under load."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from itworkers import Worker, WorkerFactory, wait_for

from tests.handlers import pid_alive

from .calls import Calls, Tally
from .infra import ENV, pools, printing_logs


def bridge_kills(factory: WorkerFactory, log: Path, *, cycles: int = 20, total: int = 300) -> Tally:
    """One worker, a pool of 4; ``cycles`` times: send a share of the ``total`` calls, SIGKILL
    2 bridges that are running calls, wait until the pool has replaced them. Every call must
    succeed or get ``BridgeCrashed``; the pool is whole after and no killed bridge remains.

    Facts: ``killed`` (pids), ``whole`` (all bridges alive, none a killed one), ``left``
    (killed pids still alive)."""
    size = 4
    worker = factory(pools(size), broker="redis", env=ENV)
    calls = Calls(worker.app, log)
    killed: list[int] = []
    per_cycle = total // cycles
    with printing_logs([worker]):
        fault_at = time.monotonic()
        for cycle in range(cycles):
            for _ in range(per_cycle if cycle < cycles - 1 else total - per_cycle * (cycles - 1)):
                calls.sleep(0.1)
            busy = wait_for(lambda: _busy(worker, killed), 20, "two bridges running calls")
            if cycle == 0:
                fault_at = time.monotonic()
            for bpid in busy:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(bpid, signal.SIGKILL)
                killed.append(bpid)
            worker.wait_for(lambda s: _whole(s, size, killed), 30)
        calls.collect(until=time.monotonic() + 60)
        tally = calls.tally(f"{cycles} cycles of 2 bridge kills", fault_at, 60)
        stats = worker.stats()["pools"]["python"]
        tally.facts.update(
            killed=len(killed),
            whole=_whole({"pools": {"python": stats}}, size, killed),
            left=[p for p in killed if pid_alive(p)],
            other_errors=[
                (c.outcome, str(c.value)[:200])
                for c in calls.calls
                if c.outcome not in ("ok", "BridgeCrashed")
            ][:5],
        )
        calls.close()
    return tally


def _busy(worker: Worker, killed: list[int]) -> list[int] | None:
    """Two pids of bridges running calls right now (None while fewer are)."""
    pids = [
        b["pid"]
        for b in worker.stats()["pools"]["python"]["bridges"]
        if b["state"] == "busy" and b["pid"] is not None and b["pid"] not in killed
    ]
    return pids[:2] if len(pids) >= 2 else None


def _whole(stats: dict[str, Any], size: int, killed: list[int]) -> bool:
    """Every bridge of the pool is up (idle or busy), alive, and none is a killed one."""
    bridges = stats["pools"]["python"]["bridges"]
    return len(bridges) == size and all(
        b["state"] in ("idle", "busy")
        and b["pid"] is not None
        and b["pid"] not in killed
        and pid_alive(b["pid"])
        for b in bridges
    )

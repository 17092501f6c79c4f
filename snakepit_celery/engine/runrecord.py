"""Records of the processes a run started, kept in its private run directory.

Each process gets a small file ``procs/<pid>`` holding its pid, its creation
time (as the kernel reports it) and the run id, written right after launch
and removed once it is reaped. A later run of the same host reads the files
that are left and ends only the processes whose pid *and* creation time
still match and whose command line carries the run id: a pid that the
kernel gave to somebody else since is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import psutil

__all__ = ["create_time", "forget_process", "read_records", "record_process"]

PROCS_DIR = "procs"


def create_time(pid: int) -> float | None:
    """The kernel's creation time of ``pid``, or None when there is no such process."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def record_process(run_dir: Path, pid: int, *, run_id: str, kind: str) -> None:
    """Write the record of a process this run started (``kind``: bridge, zygote)."""
    created = create_time(pid)
    if created is None:
        return
    procs = run_dir / PROCS_DIR
    procs.mkdir(mode=0o700, exist_ok=True)
    data = json.dumps({"pid": pid, "create_time": created, "run_id": run_id, "kind": kind})
    tmp = procs / f".{pid}.tmp"
    tmp.write_text(data)
    os.replace(tmp, procs / str(pid))


def forget_process(run_dir: Path, pid: int) -> None:
    """Remove the record of a process that has been reaped."""
    with contextlib.suppress(FileNotFoundError):
        (run_dir / PROCS_DIR / str(pid)).unlink()


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every well-formed record of a run directory (broken ones are skipped)."""
    records: list[dict[str, Any]] = []
    procs = run_dir / PROCS_DIR
    if not procs.is_dir():
        return records
    for path in procs.iterdir():
        if path.name.startswith("."):
            continue
        try:
            data = json.loads(path.read_text())
            if isinstance(data.get("pid"), int) and isinstance(data.get("create_time"), float):
                records.append(data)
        except (OSError, ValueError, AttributeError):
            continue
    return records

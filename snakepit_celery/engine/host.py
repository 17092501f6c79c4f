"""PoolHost: every pool of one worker process, one private run directory, one run id.

Layout on disk (all directories 0700, owned by the worker's user)::

    <run_dir or $TMPDIR/snakepit-<uid>>/      base
        <host key>/                            one per worker identity (e.g. celery@host)
            <run id>/                          this run: sockets, owner.json, procs/<pid>

At start the host sweeps the run directories an earlier run of the same host
key left behind (a worker killed with ``kill -9`` cannot clean up; its bridges
exit by themselves when they notice, but a stuck one might not). A process
is ended only when its pid, its kernel creation time and the run id on its
command line all match the record, so a reused pid is never touched, and a
run whose owner process is still alive is left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from snakepit_celery.config import SnakepitConfig
from snakepit_celery.engine.pool import BridgePool
from snakepit_celery.engine.runrecord import create_time, read_records
from snakepit_celery.engine.telemetry import Telemetry
from snakepit_celery.errors import ConfigurationError, PoolNotFound

__all__ = ["PoolHost", "host_directory", "sweep_host"]

log = logging.getLogger("snakepit_celery.host")  # its name before the engine/ folder

_SUMMED = (
    *("size", "workers", "available", "busy", "requests", "queued", "errors"),
    *("queue_timeouts", "pool_saturated", "restarts"),
)
OWNER_FILE = "owner.json"


def _private_dir(path: Path) -> None:
    """Create ``path`` as a 0700 directory of ours, or refuse one that is not."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not path.is_dir() or path.is_symlink():
        raise ConfigurationError(f"run_dir: {path} is not a directory")
    if info.st_uid != os.getuid():
        raise ConfigurationError(f"run_dir: {path} belongs to uid {info.st_uid}, not to this user")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)


def _private_base(path: Path) -> None:
    """Create the default base ``path`` in the shared temp dir, or refuse one not safely ours.

    Anyone can create a directory in ``/tmp``: one made in advance by another
    user (or left open to others, or a symlink to elsewhere) would let them
    swap sockets or plant run records. It is refused, never repaired.
    """
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    else:
        os.chmod(path, 0o700)  # ours, just made: whatever the umask left
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a directory"
        raise ConfigurationError(f"run_dir: the default base {path} is {kind}; remove it or set run_dir")
    if info.st_uid != os.getuid():
        raise ConfigurationError(
            f"run_dir: the default base {path} belongs to uid {info.st_uid}, not to this user "
            f"(uid {os.getuid()}); remove it or set run_dir"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigurationError(
            f"run_dir: the default base {path} has mode {mode:04o}, not 0700; "
            "remove it (or chmod 700 it) or set run_dir"
        )


def host_directory(config: SnakepitConfig, host_key: str) -> Path:
    """The directory that holds the runs of ``host_key``."""
    base = Path(config.run_dir) if config.run_dir else Path(tempfile.gettempdir()) / f"snakepit-{os.getuid()}"
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", host_key)[:32]
    digest = hashlib.sha1(host_key.encode(), usedforsecurity=False).hexdigest()[:8]
    return base / f"{readable}-{digest}"


def _owner_alive(run_dir: Path) -> bool:
    try:
        owner = json.loads((run_dir / OWNER_FILE).read_text())
        created = create_time(int(owner["pid"]))
        return created is not None and abs(created - float(owner["create_time"])) < 0.05
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _matches(record: dict[str, Any]) -> psutil.Process | None:
    """The live process a record names, if pid, creation time and run id all match."""
    pid, run_id = record["pid"], str(record.get("run_id", ""))
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - record["create_time"]) >= 0.05:
            return None
        if not run_id or run_id not in proc.cmdline():
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def sweep_host(host_dir: Path, *, keep: str | None = None, timeout: float = 5.0) -> list[int]:
    """End the processes of earlier runs under ``host_dir`` and remove their directories.

    Args:
        host_dir: the host key's directory.
        keep: a run id to leave alone (the current run).
        timeout: seconds to wait for the killed processes to be gone.

    Returns:
        The pids that were killed.
    """
    killed: list[psutil.Process] = []
    if not host_dir.is_dir():
        return []
    for run_dir in sorted(host_dir.iterdir()):
        if not run_dir.is_dir() or run_dir.name == keep:
            continue
        if _owner_alive(run_dir):
            log.warning("run directory %s belongs to a live process; not sweeping it", run_dir)
            continue
        for record in read_records(run_dir):
            proc = _matches(record)
            if proc is None:
                continue
            log.warning(
                "sweep: killing %s pid %d left by run %s", record.get("kind"), proc.pid, record["run_id"]
            )
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
                killed.append(proc)
        shutil.rmtree(run_dir, ignore_errors=True)
    if killed:
        psutil.wait_procs(killed, timeout=timeout)
    return [p.pid for p in killed]


class PoolHost:
    """All the pools of one worker process: one private 0700 run dir, one run id.

    Example::

        with PoolHost(SnakepitConfig(), host_key="celery@web1") as host:
            host.pool().execute("ping")
    """

    def __init__(
        self,
        config: SnakepitConfig,
        *,
        host_key: str,
        telemetry: Telemetry | None = None,
        session_loader: Callable[[str], dict[str, Any] | None] | None = None,
    ) -> None:
        self.config = config
        self.host_key = host_key
        #: Random per start of a worker; on every bridge's command line.
        self.run_id = secrets.token_hex(6)
        self.host_dir = host_directory(config, host_key)
        self.run_dir = self.host_dir / self.run_id
        self.pools: dict[str, BridgePool] = {
            pool.name: BridgePool(
                pool,
                run_dir=self.run_dir,
                run_id=self.run_id,
                telemetry=telemetry,
                session_loader=session_loader,
            )
            for pool in config.pools
        }
        self.swept: list[int] = []
        self._closed = False

    def start(self) -> None:
        """Sweep earlier runs of this host key, then start every pool (concurrently).

        Raises:
            BridgeStartError: a pool could not start (the others are closed again).
        """
        if self.config.run_dir:
            # The user's base (e.g. /run/snakepit): create it, never chmod it.
            self.host_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        else:
            _private_base(self.host_dir.parent)
        _private_dir(self.host_dir)
        self.swept = sweep_host(self.host_dir, keep=self.run_id)
        _private_dir(self.run_dir)
        me = os.getpid()
        (self.run_dir / OWNER_FILE).write_text(
            json.dumps(
                {"pid": me, "create_time": create_time(me), "run_id": self.run_id, "host_key": self.host_key}
            )
        )
        errors: list[BaseException] = []

        def start(pool: BridgePool) -> None:
            try:
                pool.start()
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=start, args=(p,), name=f"snakepit-start-{p.name}")
            for p in self.pools.values()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            self.close(0.0)
            raise errors[0]

    def pool(self, name: str | None = None) -> BridgePool:
        """The pool named ``name`` (None: the default pool).

        Raises:
            PoolNotFound: no such pool here; the message names those there are.
        """
        key = self.config.default_pool if name is None else name
        try:
            return self.pools[key]
        except KeyError:
            raise PoolNotFound(
                f"no pool named {key!r} on this worker; pools: {', '.join(self.pools)}"
            ) from None

    def stats(self) -> dict[str, Any]:
        """The pools' counters summed, plus ``{"pools": {name: pool.stats()}}``."""
        per_pool = {name: pool.stats() for name, pool in self.pools.items()}
        summed: dict[str, Any] = {key: sum(s[key] for s in per_pool.values()) for key in _SUMMED}
        summed["run_id"] = self.run_id
        summed["pools"] = per_pool
        return summed

    def drain(self, timeout: float) -> bool:
        """Drain every pool within one shared ``timeout``; True if all drained."""
        deadline = time.monotonic() + timeout
        return all([pool.drain(max(0.0, deadline - time.monotonic())) for pool in self.pools.values()])

    def close(self, grace: float | None = None) -> None:
        """Close every pool (in parallel, so the grace periods overlap) and remove the run dir."""
        if self._closed:
            return
        self._closed = True
        threads = [
            threading.Thread(target=pool.close, args=(grace,), name=f"snakepit-close-{pool.name}")
            for pool in self.pools.values()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> PoolHost:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

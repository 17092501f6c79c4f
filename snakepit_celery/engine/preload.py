"""The pool's side of the ``preload`` start method: one zygote, forks on request.

The zygote (``python -m snakepit_bridge.zygote``) is started once per pool
and imports gRPC and the handler module; each :meth:`Zygote.fork` gets a
fresh bridge process from it in milliseconds. A reader thread takes the
zygote's answers and exit reports off its stdout; the pool closes the
zygote's stdin to end it, and the zygote (which also watches the worker's
pid) takes its remaining children with it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from typing import Any

from snakepit_celery.engine.adapters.base import LaunchSpec
from snakepit_celery.engine.process import ForkedProcess, SpawnedProcess, describe_status
from snakepit_celery.errors import BridgeStartError

__all__ = ["Zygote"]

log = logging.getLogger("snakepit_celery.preload")  # its name before the engine/ folder


class _Pending:
    __slots__ = ("done", "error", "pid")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.pid: int | None = None
        self.error: str | None = None


class Zygote:
    """A running zygote process and the bridges it forked."""

    def __init__(self, spec: LaunchSpec, *, pool: str) -> None:
        self.spec = spec
        self.pool = pool
        self.process: SpawnedProcess | None = None
        self._ready = threading.Event()
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._next_id = 0
        self._pending: dict[int, _Pending] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._reader: threading.Thread | None = None
        self.alive = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float) -> float:
        """Start the zygote and wait for its imports; returns the seconds it took.

        Raises:
            BridgeStartError: it could not be run, exited, or was not ready in time.
        """
        started = time.monotonic()
        try:
            popen = subprocess.Popen(
                self.spec.argv,
                env=self.spec.env,
                cwd=self.spec.cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise BridgeStartError(
                f"pool {self.pool!r}: cannot run zygote {self.spec.argv[0]!r}: {exc}"
            ) from None
        self.process = SpawnedProcess(popen)
        self.alive = True
        self._reader = threading.Thread(target=self._read, name=f"snakepit-zygote-{self.pool}", daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or not self.alive:
            if self.alive:
                self.close(0.0)
                raise BridgeStartError(f"pool {self.pool!r}: zygote was not ready within {timeout}s")
            status = describe_status(self.process.reap())
            self.close(0.0)
            raise BridgeStartError(f"pool {self.pool!r}: zygote exited before it was ready ({status})")
        return time.monotonic() - started

    def fork(self, socket_path: str, timeout: float) -> ForkedProcess:
        """A new bridge forked from the zygote, serving (soon) on ``socket_path``.

        Raises:
            BridgeStartError: the zygote is gone or did not answer in time.
        """
        process = self.process
        if process is None or not self.alive:
            raise BridgeStartError(f"pool {self.pool!r}: the zygote is not running")
        assert process.popen.stdin is not None
        pending = _Pending()
        with self._lock:
            self._next_id += 1
            request_id = self._next_id
            self._pending[request_id] = pending
        line = json.dumps({"op": "fork", "id": request_id, "socket": socket_path}) + "\n"
        try:
            with self._write_lock:
                process.popen.stdin.write(line.encode())
                process.popen.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            with self._lock:
                self._pending.pop(request_id, None)
            raise BridgeStartError(f"pool {self.pool!r}: the zygote is gone") from None
        ok = pending.done.wait(timeout)
        with self._lock:
            self._pending.pop(request_id, None)
            if not ok or pending.pid is None:
                why = pending.error or ("no answer in time" if not ok else "the zygote exited")
                raise BridgeStartError(f"pool {self.pool!r}: the zygote could not fork a bridge: {why}")
            child = ForkedProcess(pending.pid)
            self._children[child.pid] = child
            status = self._early_exits.pop(child.pid, None)
        if status is not None:
            child.set_status(status)
        return child

    def _read(self) -> None:
        assert self.process is not None and self.process.popen.stdout is not None
        for raw in self.process.popen.stdout:
            try:
                message: dict[str, Any] = json.loads(raw)
                op = message["op"]
            except (ValueError, KeyError, TypeError):
                log.warning("pool %s: zygote sent a bad line %r", self.pool, raw[:200])
                continue
            if op == "ready":
                self._ready.set()
            elif op in ("forked", "error"):
                with self._lock:
                    pending = self._pending.get(message.get("id"))  # type: ignore[arg-type]
                if pending is not None:
                    pending.pid = message.get("pid")
                    pending.error = message.get("error")
                    pending.done.set()
                elif op == "error":
                    log.warning("pool %s: zygote: %s", self.pool, message.get("error"))
            elif op == "exited":
                pid, status = int(message["pid"]), int(message["status"])
                with self._lock:
                    child = self._children.pop(pid, None)
                    if child is None:
                        self._early_exits[pid] = status
                if child is not None:
                    child.set_status(status)
        # End of output: the zygote has exited.
        self.alive = False
        self._ready.set()
        with self._lock:
            pending_all = list(self._pending.values())
        for pending in pending_all:
            pending.done.set()

    def close(self, grace: float) -> None:
        """End the zygote: close its stdin, SIGKILL after ``grace``, reap it."""
        process = self.process
        if process is None:
            return
        stdin = process.popen.stdin
        if stdin is not None:
            try:
                with self._write_lock:
                    stdin.close()
            except OSError:
                pass
        if not process.has_exited(max(grace, 0.0)):
            process.kill()
        try:
            process.popen.wait(5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not refused
            log.error("pool %s: zygote pid %s did not die", self.pool, process.pid)
        if self._reader is not None:
            self._reader.join(2.0)
        if process.popen.stdout is not None:
            process.popen.stdout.close()
        process.close()
        self.alive = False

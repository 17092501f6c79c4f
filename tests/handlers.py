"""A handler for the pool tests: the showcase plus commands that misbehave on purpose,
and the small helpers the pool and host tests share.

Bridges load it with ``--adapter tests.handlers:TestHandler`` and the repository
root on PYTHONPATH (see :func:`pool_config`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from snakepit_bridge import command
from snakepit_bridge.showcase import ShowcaseHandler

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLER = "tests.handlers:TestHandler"


class TestHandler(ShowcaseHandler):
    """Showcase commands plus hang, crash, memory ballast and file-gated blocking."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        super().__init__()
        self._ballast: list[bytes] = []

    @command
    def array_facts(self, **arrays: Any) -> dict[str, Any]:
        """What arrived for each argument: its type, dtype, shape and sum, and the array doubled."""
        facts: dict[str, Any] = {}
        for name, value in arrays.items():
            facts[name] = {
                "type": f"{type(value).__module__}.{type(value).__name__}",
                "dtype": str(getattr(value, "dtype", "")),
                "shape": list(getattr(value, "shape", ())),
                "sum": float(value.sum()) if hasattr(value, "sum") else None,
                "doubled": value * 2 if hasattr(value, "sum") else None,
            }
        return facts

    @command
    def hang(self, seconds: float = 3600.0, log: str = "") -> dict[str, Any]:
        """Block without looking at cancellation: only a kill ends it (``hanging`` to ``log`` first)."""
        if log:
            with open(log, "a") as f:
                f.write("hanging\n")
        time.sleep(seconds)
        return {"pid": os.getpid()}

    @command
    def stubborn_stream(self, seconds: float = 60.0) -> Iterator[dict[str, Any]]:
        """Yield once, then block in one long step that never looks at cancellation."""
        yield {"pid": os.getpid(), "is_final": False}
        time.sleep(seconds)
        yield {"pid": os.getpid(), "is_final": True}

    @command
    def crash(self, code: int = 3) -> dict[str, Any]:
        """Exit the bridge process at once, mid-call."""
        os._exit(code)

    @command
    def kill_self(self) -> dict[str, Any]:
        """SIGKILL the bridge process, mid-call."""
        os.kill(os.getpid(), signal.SIGKILL)
        return {}

    @command
    def allocate(self, mb: int) -> dict[str, Any]:
        """Keep ``mb`` MiB of touched memory alive in the bridge."""
        self._ballast.append(b"\x01" * (mb << 20))
        return {"pid": os.getpid(), "held_mb": sum(len(b) for b in self._ballast) >> 20}

    @command
    def wait_file(self, path: str, token: str = "", log: str = "", timeout: float = 60.0) -> dict[str, Any]:
        """Block until ``path`` exists (the test's gate); append ``token`` to ``log`` first."""
        if log:
            with open(log, "a") as f:
                f.write(token + "\n")
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if self.context.cancelled.wait(0.005) or time.monotonic() > deadline:
                return {"pid": os.getpid(), "released": False, "token": token}
        return {"pid": os.getpid(), "released": True, "token": token}

    @command
    def wait_cancel(self, log: str, token: str, timeout: float = 60.0) -> dict[str, Any]:
        """Append ``started <token>`` to ``log``, wait for the caller's cancel (polling
        ``context.cancelled``), then append ``cancelled <token>``: proof the bridge saw it."""
        with open(log, "a") as f:
            f.write(f"started {token}\n")
        seen = self.context.cancelled.wait(timeout)
        if seen:
            with open(log, "a") as f:
                f.write(f"cancelled {token}\n")
        return {"pid": os.getpid(), "cancelled": seen}

    @command
    async def await_cancel(self, log: str, token: str, timeout: float = 60.0) -> dict[str, Any]:
        """As ``wait_cancel``, async: the cancel cancels this command's task at its ``await``."""
        with open(log, "a") as f:
            f.write(f"started {token}\n")
        try:
            await asyncio.sleep(timeout)
        except asyncio.CancelledError:
            with open(log, "a") as f:
                f.write(f"cancelled {token}\n")
            raise
        return {"pid": os.getpid(), "cancelled": False}

    @command
    def counter_stream(self, count: int = 3) -> Iterator[dict[str, Any]]:
        """Increment the session's counter ``count`` times, one chunk each: the stream sees
        and changes the session's state, and says which bridge it ran on."""
        session = self.context.session
        for seq in range(count):
            session["counter"] = session.get("counter", 0) + 1
            yield {"value": session["counter"], "pid": os.getpid(), "is_final": seq == count - 1}

    @command
    def record(self, log: str, token: str) -> dict[str, Any]:
        """Append ``token`` to the file ``log``: proof that this call ran, and when."""
        with open(log, "a") as f:
            f.write(token + "\n")
        return {"pid": os.getpid(), "token": token}


def pool_config(**overrides: Any) -> Any:
    """A PoolConfig of the test handler, quick to start and stop."""
    from snakepit_celery.config import PoolConfig

    values: dict[str, Any] = {
        "name": "test",
        "size": 2,
        "handler": HANDLER,
        "env": {"PYTHONPATH": str(REPO_ROOT)},
        "shutdown_grace": 2.0,
        "startup_timeout": 20.0,
    }
    values.update(overrides)
    return PoolConfig(**values)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(interval)


def pids_serving(pool: Any, size: int, gate_dir: Path) -> set[int]:
    """The pids that answer ``size`` calls running at once: one per bridge.

    Sequential calls all go to the newest idle bridge, so reaching every
    bridge takes calls that hold their bridges until all have started.
    """
    import threading

    gate = gate_dir / f"every-bridge-{time.monotonic_ns()}"
    pids: list[int] = []
    threads = [
        threading.Thread(target=lambda: pids.append(pool.execute("wait_file", {"path": str(gate)})["pid"]))
        for _ in range(size)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: pool.stats()["busy"] == size, 10.0, f"{size} bridges busy at once")
    gate.touch()
    for thread in threads:
        thread.join(10.0)
    return set(pids)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a live (not zombie) process."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class PoolFactory:
    """Builds started pools in short private run dirs and closes them all afterwards."""

    def __init__(self) -> None:
        import tempfile

        self.base = Path(tempfile.mkdtemp(prefix="sp-"))
        self.pools: list[Any] = []

    def __call__(self, telemetry: Any = None, session_loader: Any = None, **overrides: Any) -> Any:
        from snakepit_celery.engine.pool import BridgePool

        pool = BridgePool(
            pool_config(**overrides),
            run_dir=self.base / f"r{len(self.pools)}",
            run_id=f"testrun{len(self.pools)}",
            telemetry=telemetry,
            session_loader=session_loader,
        )
        self.pools.append(pool)
        pool.start()
        return pool

    def close(self) -> None:
        import shutil

        for pool in self.pools:
            pool.close(1.0)
        shutil.rmtree(self.base, ignore_errors=True)


def __getattr__(name: str) -> Any:
    """Test helpers that need snakepit_celery, built on first use (so a bridge importing
    this module does not import snakepit_celery): ``NoPreloadAdapter``, an adapter
    without the preload start method, and ``Recorder``, a Telemetry that keeps every event."""
    if name == "NoPreloadAdapter":
        from snakepit_celery.engine.adapters.python import PythonAdapter

        class NoPreloadAdapter(PythonAdapter):
            supports_preload = False

        globals()[name] = NoPreloadAdapter
        return NoPreloadAdapter
    if name == "Recorder":
        import threading

        from snakepit_celery.engine.telemetry import Telemetry

        class Recorder(Telemetry):
            """Telemetry that keeps every event."""

            def __init__(self) -> None:
                self.events: list[tuple[str, dict[str, Any]]] = []
                self.lock = threading.Lock()

            def _add(self, name: str, **fields: Any) -> None:
                with self.lock:
                    self.events.append((name, fields))

            def request_finished(self, **fields: Any) -> None:
                self._add("request_finished", **fields)

            def bridge_started(self, **fields: Any) -> None:
                self._add("bridge_started", **fields)

            def bridge_exited(self, **fields: Any) -> None:
                self._add("bridge_exited", **fields)

            def queue_wait(self, **fields: Any) -> None:
                self._add("queue_wait", **fields)

            def stream_chunks(self, **fields: Any) -> None:
                self._add("stream_chunks", **fields)

            def named(self, name: str) -> list[dict[str, Any]]:
                with self.lock:
                    return [fields for event, fields in self.events if event == name]

        globals()[name] = Recorder
        return Recorder
    raise AttributeError(name)

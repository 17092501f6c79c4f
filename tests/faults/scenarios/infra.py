"""What every scenario stands on: the workers' settings, a Redis that restarts, a pair of workers."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from itworkers import Worker, WorkerFactory

from snakepit_celery.embedded import EmbeddedRedis, _die_with_parent

REPO = Path(__file__).resolve().parents[3]
#: The session lease TTL the scenarios' workers run with (the default is 7 s).
LEASE_TTL = 3.0
#: A worker SIGKILLed with calls in flight: every caller has its answer this soon after.
RECOVERY_BOUND = LEASE_TTL + 5.0
HANDLER = "tests.faults.handler:FaultHandler"
#: Bridges find ``tests.faults.handler`` from the repository root.
ENV = {
    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    "SNAKEPIT_SESSION_LEASE_TTL": str(LEASE_TTL),
    "SNAKEPIT_SESSION_EXPIRY_GRACE": "0.5",
    "SNAKEPIT_SESSION_EXPIRY_INTERVAL": "0.5",
}
AMQP_URL = os.environ.get("SNAKEPIT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def pools(size: int = 2) -> dict[str, dict[str, Any]]:
    """One ``python`` pool of ``size`` bridges serving the fault handler."""
    return {"python": {"size": size, "handler": HANDLER, "shutdown_grace": 2.0}}


class RestartableRedis(EmbeddedRedis):
    """An embedded redis-server (no persistence) that can crash and come back on its port."""

    def restart(self) -> None:
        """SIGKILL the server (everything in it is lost), start it again on the same port."""
        old = self.process
        assert old is not None, "not started"
        argv = list(old.args)  # type: ignore[arg-type]
        old.kill()
        old.wait()
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        if not self._wait_ready():
            raise AssertionError(f"redis-server did not come back on port {self.port}")


class Fixtures:
    """What ``WorkerFactory`` asks of pytest's request, outside pytest (the benchmark)."""

    def getfixturevalue(self, name: str) -> Any:
        assert name == "rabbitmq_url", name
        return AMQP_URL


def pair(
    factory: WorkerFactory, broker: str, size: int = 2, env: dict[str, str] | None = None
) -> list[Worker]:
    """Two workers of one prefix on one broker and one result backend, both ready."""
    env = {**ENV, **(env or {})}
    a = factory(pools(size), broker=broker, name="a", env=env, wait=False)
    b = factory(
        pools(size),
        broker=a.broker,
        name="b",
        prefix=a.prefix,
        env={**env, "IT_BACKEND": a.env["IT_BACKEND"]},
    )
    a.process.wait_ready(a.app, a.hostname, timeout=60)
    return [a, b]


def answers_ping(worker: Worker) -> bool:
    """True when the worker answers a control ping (False while its broker is away)."""
    try:
        return bool(worker.app.control.ping(destination=[worker.hostname], timeout=0.5))
    except Exception:  # the caller's own broker connection is broken too: not yet
        return False


@contextlib.contextmanager
def printing_logs(workers: list[Worker]) -> Iterator[None]:
    """On an exception, print the tail of every worker's log (what went wrong, seen from there)."""
    try:
        yield
    except BaseException:
        for w in workers:
            with contextlib.suppress(Exception):
                print(f"--- log of {w.hostname}:\n{w.process.log()[-6000:]}")
        raise

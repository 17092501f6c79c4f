"""The fault scenarios, shared by the fault tests and ``benchmarks/faults.py``.

Each scenario starts real workers (``itworkers.WorkerFactory``), sends real
calls, injects one kind of fault (a worker SIGKILLed, a Redis restarted, bridges
killed, a session owner frozen) and returns a :class:`Tally` of what became of
every call. The tests assert on the tally and on the scenario's own facts; the
benchmark prints the tallies as one table. Nothing here asserts: a scenario
run against code that strands its callers must still come back with figures.

Counting:

- a call is *done* when its caller got a result, and *errored* when it got an
  exception (counted by class);
- *stranded*: its caller had no answer by the scenario's bound (the caller's
  ``get`` timed out there);
- *duplicated*: the command body ran more than once (the run log, written by
  the bridges' :class:`~tests.faults.handler.FaultHandler`, has two starts);
- *lost*: it never ran and its caller got no error (a subset of stranded, or
  of the callers whose own timeout fired).

The scenarios are one module per family (``worker_death``, ``redis_restarts``,
``killed_bridges``, ``frozen_session``) over ``calls`` (the tally of what became
of every call) and ``infra`` (the workers' settings, a restartable Redis, a
pair of workers); everything the tests and the benchmark use is here.
"""

from __future__ import annotations

import sys
from pathlib import Path

_FAULTS = Path(__file__).resolve().parents[1]
for _path in (_FAULTS.parents[1], _FAULTS.parent / "integration"):  # tests.handlers; itworkers, itapp
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from .calls import Call, Calls, RunLog, Tally  # noqa: E402
from .frozen_session import frozen_owner  # noqa: E402
from .infra import (  # noqa: E402
    AMQP_URL,
    ENV,
    HANDLER,
    LEASE_TTL,
    RECOVERY_BOUND,
    Fixtures,
    RestartableRedis,
    answers_ping,
    pair,
    pools,
    printing_logs,
)
from .killed_bridges import bridge_kills  # noqa: E402
from .redis_restarts import broker_restart, stream_redis_restart  # noqa: E402
from .worker_death import worker_sigkill  # noqa: E402

__all__ = [
    "AMQP_URL",
    "ENV",
    "HANDLER",
    "LEASE_TTL",
    "RECOVERY_BOUND",
    "Call",
    "Calls",
    "Fixtures",
    "RestartableRedis",
    "RunLog",
    "Tally",
    "answers_ping",
    "bridge_kills",
    "broker_restart",
    "frozen_owner",
    "pair",
    "pools",
    "printing_logs",
    "stream_redis_restart",
    "worker_sigkill",
]

"""Redis restarting under a worker (issue 14, scenarios c and d).

c. The Redis that holds sessions and streams (its own server, apart from the
   broker's) restarts, empty, while a stream is being read: the reader ends
   (finished, or ``StreamError``) within 30 s, and the same worker then serves
   new calls, a session call and a new stream.
d. The Redis broker (and result backend) restarts, empty, with calls running
   and queued: the worker reconnects, calls sent after it is back succeed, and
   the callers of the calls the restart lost get an answer (their own
   ``get`` timeout at the latest), never a hang past it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from itworkers import WorkerFactory
from scenarios import broker_restart, stream_redis_restart


@pytest.mark.slow
def test_a_stream_ends_when_its_redis_restarts_and_the_worker_serves_on(
    worker_factory: WorkerFactory, run_log: Path
) -> None:
    tally = stream_redis_restart(worker_factory, run_log)
    print(tally.describe())
    facts = tally.facts
    assert facts["reader"] in ("finished", "StreamError"), tally.describe()
    assert facts["reader_after"] <= 30
    assert facts["worker_pid_same"], "the worker restarted or died"
    assert facts["after_calls"] == ["ok"] * 6, tally.describe()
    assert facts["second_stream"] == {"chunks": 20, "outcome": "ok"}, tally.describe()
    assert tally.stranded == 0 and tally.duplicated == 0


@pytest.mark.slow
def test_the_worker_reconnects_after_its_redis_broker_restarts_and_no_caller_hangs(
    worker_factory: WorkerFactory, run_log: Path
) -> None:
    tally = broker_restart(worker_factory, run_log)
    print(tally.describe())
    facts = tally.facts
    assert facts["worker_pid_same"], "the worker restarted or died"
    assert facts["after"] == {"ok": 20}, tally.describe()
    assert tally.stranded == 0, tally.describe()
    assert tally.duplicated == 0, tally.describe()

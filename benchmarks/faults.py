"""What becomes of the callers when things break: one row per fault scenario of issue 14.

Run: ``.venv/bin/python benchmarks/faults.py`` (about 5 minutes on 2 cores; longer
when callers are stranded, since they are waited for up to ``--bound`` seconds).

The scenarios are the fault suite's own (``tests/faults/scenarios/``): real
workers in subprocesses, real bridges, a private Redis (and the machine's
RabbitMQ under a unique prefix, whose queues are deleted afterwards):

- a worker SIGKILLed 1.5 s after 80 ``sleep(0.25)`` calls were sent to a pool
  served by two workers, on a Redis and on a RabbitMQ broker;
- both workers SIGKILLed, then a fresh one started;
- the Redis of sessions and streams restarted (empty) under a running stream;
- the Redis broker restarted (empty) under load, callers waiting 15 s each;
- 20 cycles of 2 bridge kills under 300 calls;
- a session's owner frozen (SIGSTOP) past its lease, then woken, on each broker.

Columns: *done* callers got a result; *errors* by class; *stranded* callers had no
answer by the bound (a caller whose own ``get`` timeout fired is answered, by
``TimeoutError``, unless its ``get`` overran the timeout); *duplicated* calls ran
more than once; *lost* never ran and their caller got no error; *out of order*
(session calls only) ran after a call sent later; *last answer*
is the time from the (first) fault to the last caller's answer.

    .venv/bin/python benchmarks/faults.py [--bound 60] [--only a,b] [--skip-amqp]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "faults"))

import scenarios
from itworkers import WorkerFactory
from kombu import Connection

from snakepit_celery.embedded import EmbeddedRedis


def rows(bound: float, amqp: bool) -> list[tuple[str, str, Callable[[WorkerFactory, Path], scenarios.Tally]]]:
    """(key, broker, run) for every scenario; ``run`` gets a fresh factory and a run log."""
    s = scenarios
    brokers = ["redis", "amqp"] if amqp else ["redis"]
    out: list[tuple[str, str, Callable[[WorkerFactory, Path], scenarios.Tally]]] = []
    for broker in brokers:
        out.append(("a", broker, lambda f, log, b=broker: s.worker_sigkill(f, b, log, bound=bound)))
    for broker in brokers:
        out.append(
            ("b", broker, lambda f, log, b=broker: s.worker_sigkill(f, b, log, both=True, bound=bound))
        )
    out.append(("c", "redis", s.stream_redis_restart))
    out.append(("d", "redis", s.broker_restart))
    out.append(("e", "redis", s.bridge_kills))
    for broker in brokers:
        out.append(("f", broker, lambda f, log, b=broker: s.frozen_owner(f, b, log)))
    return out


def amqp_reachable() -> bool:
    try:
        with Connection(scenarios.AMQP_URL, connect_timeout=2) as probe:
            probe.ensure_connection(max_retries=1)
        return True
    except Exception as exc:  # any failure means "no RabbitMQ here"
        print(f"RabbitMQ not reachable at {scenarios.AMQP_URL} ({exc}); Redis only", file=sys.stderr)
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bound", type=float, default=60.0, help="s a caller waits after a worker SIGKILL")
    parser.add_argument("--only", default="", help="scenario letters to run, e.g. a,b (default: all)")
    parser.add_argument("--skip-amqp", action="store_true", help="Redis broker only")
    ns = parser.parse_args()
    only = {x.strip() for x in ns.only.split(",") if x.strip()}
    import snakepit_celery

    print(f"snakepit_celery from {Path(snakepit_celery.__file__).parent}", file=sys.stderr)

    table: list[tuple[str, ...]] = []
    started = time.monotonic()
    with EmbeddedRedis() as redis_server:
        for key, broker, run in rows(ns.bound, not ns.skip_amqp and amqp_reachable()):
            if only and key not in only:
                continue
            tmp = Path(tempfile.mkdtemp(prefix="sp-faults-"))
            factory = WorkerFactory(tmp, redis_server, scenarios.Fixtures(), shared=False)  # type: ignore[arg-type]
            try:
                tally = run(factory, tmp / "runs.log")
                print(f"{key}. {tally.describe()}", file=sys.stderr)
                table.append(
                    (
                        f"{key}. {tally.scenario}",
                        str(tally.calls),
                        str(tally.done),
                        tally.errors_text(),
                        str(tally.stranded),
                        str(tally.duplicated),
                        str(tally.lost),
                        str(tally.facts.get("out_of_order", "-")),
                        tally.last_answer_text(),
                    )
                )
            except Exception as exc:
                traceback.print_exc()
                table.append((f"{key}. ({broker}) did not run: {type(exc).__name__}", *["?"] * 8))
            finally:
                try:
                    factory.close()
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"Fault scenarios (issue 14): lease TTL {scenarios.LEASE_TTL:.0f} s, callers of a killed worker "
        f"wait up to {ns.bound:.0f} s; {time.monotonic() - started:.0f} s in all"
    )
    header = ("scenario", "calls", "done", "errors by class", "stranded", "duplicated", "lost")
    header += ("out of order", "last answer")
    table.insert(0, header)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())

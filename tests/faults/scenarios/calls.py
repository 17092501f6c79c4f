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
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _path in (REPO, HERE.parent / "integration"):  # tests.handlers; itworkers, itapp (the workers' app)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from itworkers import Worker, WorkerFactory, wait_for  # noqa: E402

from snakepit_celery.embedded import EmbeddedRedis, _die_with_parent  # noqa: E402
from tests.handlers import pid_alive  # noqa: E402

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


# -- what became of the calls -------------------------------------------------------------------


@dataclass
class Tally:
    """The figures of one scenario run (one row of the benchmark's table)."""

    scenario: str
    calls: int = 0
    done: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    stranded: int = 0
    duplicated: int = 0
    lost: int = 0
    #: Seconds from the fault to the last answer; None when nobody was answered.
    last_answer: float | None = None
    #: The bound the callers waited to (seconds after the fault).
    bound: float = 0.0
    #: What else the scenario found (for its test's assertions and the printout).
    facts: dict[str, Any] = field(default_factory=dict)

    def errors_text(self) -> str:
        return ", ".join(f"{name} {n}" for name, n in sorted(self.errors.items())) or "-"

    def last_answer_text(self) -> str:
        if self.stranded:
            return f">{self.bound:.1f} s"
        return "-" if self.last_answer is None else f"{self.last_answer:.1f} s"

    def describe(self) -> str:
        """One line of figures, which each fault test prints."""
        return (
            f"{self.scenario}: calls {self.calls}, done {self.done}, errors {{{self.errors_text()}}}, "
            f"stranded {self.stranded}, duplicated {self.duplicated}, lost {self.lost}, "
            f"last answer {self.last_answer_text()} after the fault; {self.facts}"
        )


class RunLog:
    """The bridges' run log (``S``/``E`` lines of :class:`FaultHandler`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[tuple[str, str, int]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            mark, token, pid = line.split()
            out.append((mark, token, int(pid)))
        return out

    def runs(self) -> dict[str, list[int]]:
        """For every token that ran, the pid of each bridge that started it, in order."""
        runs: dict[str, list[int]] = collections.defaultdict(list)
        for mark, token, pid in self.lines():
            if mark == "S":
                runs[token].append(pid)
        return runs

    def running(self, pids: set[int]) -> set[str]:
        """Tokens started on one of ``pids`` and not ended (yet)."""
        open_: set[str] = set()
        for mark, token, pid in self.lines():
            if pid in pids:
                (open_.add if mark == "S" else open_.discard)(token)
        return open_


@dataclass
class Call:
    token: str
    result: Any  # a Celery AsyncResult
    sent_at: float
    #: The caller's own timeout from ``sent_at`` (None: the scenario's bound).
    timeout: float | None = None
    answered_at: float | None = None
    #: "ok", the class name of the error, or None (no answer).
    outcome: str | None = None
    value: Any = None


class Calls:
    """Sleep calls with unique tokens, sent through one caller app, and their answers."""

    def __init__(self, app: Any, log: Path) -> None:
        self.app = app
        self.log = RunLog(log)
        self.calls: list[Call] = []
        self.lock = threading.Lock()

    def _args(self, seconds: float) -> tuple[str, dict[str, Any]]:
        token = f"t{len(self.calls)}-{uuid.uuid4().hex[:6]}"
        return token, {"seconds": seconds, "token": token, "log": str(self.log.path)}

    def sleep(self, seconds: float, *, timeout: float | None = None, **options: Any) -> Call:
        """Send ``execute("sleep", ...)`` to the default pool."""
        with self.lock:
            token, args = self._args(seconds)
            result = self.app.tasks["snakepit.execute"].apply_async(("sleep", args), options or None)
            call = Call(token, result, time.monotonic(), timeout)
            self.calls.append(call)
        return call

    def session_sleep(self, sid: str, seconds: float, *, timeout: float | None = None) -> Call:
        """Send ``execute_in_session(sid, "sleep", ...)``."""
        with self.lock:
            token, args = self._args(seconds)
            result = self.app.tasks["snakepit.execute_in_session"].apply_async((sid, "sleep", args))
            call = Call(token, result, time.monotonic(), timeout)
            self.calls.append(call)
        return call

    def collect(self, until: float) -> None:
        """Wait for every caller's answer, each to its own timeout or else to ``until`` (a
        ``time.monotonic()`` value). Results are polled (so each answer's time is when it was
        stored), then fetched with ``get``; a caller whose own timeout passed calls ``get``
        once more, as a caller would, to see that it ends (``TimeoutError``) and does not hang."""
        pending = [c for c in self.calls if c.outcome is None]
        while pending:
            now = time.monotonic()
            still = []
            for call in pending:
                try:
                    ready = call.result.ready()
                except Exception:  # its Redis is away right now: ask again next round
                    ready = False
                if ready:
                    self._fetch(call, time.monotonic())
                elif now < (until if call.timeout is None else call.sent_at + call.timeout):
                    still.append(call)
                elif call.timeout is not None:
                    self._fetch(call, None)
            pending = still
            if pending:
                time.sleep(0.05)  # the polling interval

    @staticmethod
    def _fetch(call: Call, ready_at: float | None) -> None:
        """Take the answer of a stored result (``ready_at``), or, for a caller whose own timeout
        passed, see what its ``get`` does: the answer time is then its timeout plus however
        long ``get(timeout=0.5)`` overran its 0.5 s (a hang shows as a late answer)."""
        began = time.monotonic()
        wait = 5.0 if ready_at else 0.5
        try:
            value = call.result.get(timeout=wait, propagate=False)
        except Exception as exc:  # TimeoutError: its own timeout; others: its get failed
            overrun = max(0.0, time.monotonic() - began - wait)
            expired = call.sent_at + (call.timeout or 0.0)
            call.outcome, call.value = type(exc).__name__, exc
            call.answered_at = (ready_at or expired) + overrun
            return
        call.answered_at = ready_at or time.monotonic()
        call.value = value
        call.outcome = "ok" if call.result.successful() else type(value).__name__

    def tally(self, scenario: str, fault_at: float, bound: float, *, hang_slack: float = 2.0) -> Tally:
        """The figures: a caller with its own timeout is stranded when answered more than
        ``hang_slack`` s past that timeout (a hang), any other one when not answered by the bound."""
        runs = self.log.runs()
        tally = Tally(scenario, calls=len(self.calls), bound=bound)
        answers = [c.answered_at for c in self.calls if c.answered_at is not None]
        tally.last_answer = max(answers) - fault_at if answers else None
        for call in self.calls:
            if len(runs.get(call.token, [])) > 1:
                tally.duplicated += 1
            late = (
                call.timeout is not None
                and call.answered_at is not None
                and call.answered_at > call.sent_at + call.timeout + hang_slack
            )
            if call.outcome is None or late:
                tally.stranded += 1
            elif call.outcome == "ok":
                tally.done += 1
            else:
                tally.errors[call.outcome] += 1
            if call.token not in runs and call.outcome in (None, "TimeoutError"):
                tally.lost += 1
        return tally

    def close(self) -> None:
        """Forget the results (their backend keys, the app's pending subscriptions)."""
        for call in self.calls:
            with contextlib.suppress(Exception):  # the backend may be gone (a restarted Redis)
                call.result.forget()


# -- infrastructure ----------------------------------------------------------------------------


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


# -- a, b: workers SIGKILLed with calls in flight ------------------------------------------------


def worker_sigkill(
    factory: WorkerFactory, broker: str, log: Path, *, both: bool = False, bound: float = RECOVERY_BOUND
) -> Tally:
    """80 ``sleep(0.25)`` calls to a pool served by two workers; 1.5 s later one worker (or,
    with ``both``, both, and then a fresh one is started) is SIGKILLed. Callers wait until
    ``bound`` s after the fault (after the fresh worker is ready, with ``both``).

    Facts: ``started_on_dead`` (tokens that had begun on a killed worker's bridge),
    ``wrong`` (callers whose answer is not the one the issue demands: ``WorkerLost`` for
    a call begun on a dead worker and not answered before, a result for any other)."""
    workers = pair(factory, broker)
    a, b = workers
    victims = [a, b] if both else [a]
    calls = Calls(a.app, log)
    with printing_logs(workers):
        dead_pids = {pid for w in victims for pid in w.bridge_pids()}
        first = time.monotonic()
        for _ in range(80):
            calls.sleep(0.25)
        # 1.5 s after sending, and once a victim has a call running (else nothing is tested).
        wait_for(
            lambda: time.monotonic() >= first + 1.5 and calls.log.running(dead_pids),
            30,
            "a call running on the worker to kill",
        )
        for victim in victims:
            victim.process.signal(signal.SIGKILL)
        fault_at = time.monotonic()
        for victim in victims:
            victim.process.wait(10)
        ready_at = fault_at
        if both:
            fresh = factory(
                pools(),
                broker=a.broker,
                name="c",
                prefix=a.prefix,
                env={**ENV, "IT_BACKEND": a.env["IT_BACKEND"]},
            )
            workers.append(fresh)
            ready_at = time.monotonic()
        calls.collect(until=ready_at + bound)
        tally = calls.tally(
            f"{'both workers' if both else 'a worker'} SIGKILLed ({broker})",
            fault_at,
            ready_at - fault_at + bound,
        )
        runs = calls.log.runs()
        started_on_dead = {t for t, pids in runs.items() if pids[0] in dead_pids}
        wrong = []
        for call in calls.calls:
            if call.outcome is None:
                continue
            if call.outcome == "ok" or (call.outcome == "WorkerLost" and call.token in started_on_dead):
                continue
            wrong.append((call.token, call.outcome, str(call.value)[:200]))
        tally.facts.update(
            started_on_dead=len(started_on_dead),
            wrong=wrong,
            fresh_worker_start=round(ready_at - fault_at, 1),
        )
        calls.close()
    return tally


# -- c: the sessions-and-streams Redis restarting under a running stream ---------------------------


def stream_redis_restart(factory: WorkerFactory, log: Path) -> Tally:
    """A worker on a Redis broker whose sessions and streams live in a Redis of their own;
    that Redis restarts (SIGKILL, empty) while a stream is being read. The reader must end
    (finished, or ``StreamError``) within 30 s; then new calls, a session call and a new
    stream must work on the same worker.

    Facts: ``reader`` (how the running stream ended and when), ``worker_pid_same``."""
    from snakepit_celery import stream

    side = RestartableRedis().start()
    try:
        worker = factory(pools(), broker="redis", env={**ENV, "SNAKEPIT_REDIS_URL": side.url(0)})
        pid = worker.process.pid
        calls = Calls(worker.app, log)
        with printing_logs([worker]):
            chunks: list[Any] = []
            ended: dict[str, Any] = {}

            def read() -> None:
                try:
                    with stream("ping_stream", {"count": 300, "interval": 0.03}, app=worker.app) as s:
                        for chunk in s:
                            chunks.append(chunk)
                    ended.update(outcome="finished", at=time.monotonic())
                except Exception as exc:
                    ended.update(outcome=type(exc).__name__, error=str(exc)[:200], at=time.monotonic())

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            wait_for(lambda: len(chunks) >= 20 or ended, 30, "the stream to be under way")
            side.restart()
            fault_at = time.monotonic()
            reader.join(30)
            reader_ended = ended.get("outcome", "still reading at 30 s")
            # Afterwards: plain calls, a session call, and a new stream, on the same worker.
            after = [calls.sleep(0.05) for _ in range(5)]
            after.append(calls.session_sleep(f"c-{uuid.uuid4().hex[:8]}", 0.05))
            calls.collect(until=time.monotonic() + 30)
            second: dict[str, Any] = {}
            try:
                with stream(
                    "ping_stream", {"count": 20, "interval": 0.01}, app=worker.app, idle_timeout=20
                ) as s:
                    second.update(chunks=sum(1 for _ in s), outcome=s.outcome)
            except Exception as exc:
                second.update(outcome=type(exc).__name__, error=str(exc)[:200])
            tally = calls.tally("sessions/streams Redis restarted under a stream", fault_at, 30)
            # The first stream is a call too: done when it finished, its error class otherwise.
            tally.calls += 2
            for outcome in (reader_ended, second.get("outcome")):
                if outcome in ("finished", "ok"):
                    tally.done += 1
                elif outcome == "still reading at 30 s":
                    tally.stranded += 1
                else:
                    tally.errors[str(outcome)] += 1
            if "at" in ended:
                tally.last_answer = max(tally.last_answer or 0.0, ended["at"] - fault_at)
            tally.facts.update(
                reader=reader_ended,
                reader_after=round(ended["at"] - fault_at, 1) if "at" in ended else None,
                reader_error=ended.get("error"),
                chunks_before_end=len(chunks),
                after_calls=[c.outcome for c in after],
                second_stream=second,
                worker_pid_same=worker.process.alive() and worker.process.pid == pid,
            )
            calls.close()
        return tally
    finally:
        side.stop()


# -- d: the Redis broker restarting under load ---------------------------------------------------


def broker_restart(factory: WorkerFactory, log: Path, *, caller_timeout: float = 15.0) -> Tally:
    """A worker whose broker (and result backend) is a Redis that restarts (SIGKILL, empty)
    with 40 calls sent, some running, the rest queued. Every caller waits with its own
    timeout; none may hang past it. Once the worker answers again, 20 new calls must succeed.

    Facts: ``reconnected_after`` (s until the worker answered a ping), ``after_ok``."""
    broker = RestartableRedis().start()
    try:
        worker = factory(pools(), broker=broker.url(0), env=ENV)
        pid = worker.process.pid
        calls = Calls(worker.app, log)
        with printing_logs([worker]):
            first = [calls.sleep(0.2, timeout=caller_timeout) for _ in range(40)]
            wait_for(lambda: len(calls.log.runs()) >= 6, 30, "calls to be running")
            broker.restart()
            fault_at = time.monotonic()
            wait_for(
                lambda: answers_ping(worker),
                60,
                "the worker to answer again after the broker restarted",
            )
            back_at = time.monotonic()
            after = [calls.sleep(0.05, timeout=30) for _ in range(20)]
            calls.collect(until=time.monotonic() + 30)
            tally = calls.tally("Redis broker restarted under load", fault_at, caller_timeout)
            tally.facts.update(
                reconnected_after=round(back_at - fault_at, 1),
                before=collections.Counter(str(c.outcome) for c in first),
                after=collections.Counter(str(c.outcome) for c in after),
                worker_pid_same=worker.process.alive() and worker.process.pid == pid,
            )
            calls.close()
        return tally
    finally:
        broker.stop()


# -- e: bridges killed under load ---------------------------------------------------------------


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


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 7, 8, 3]`` as ``"0-2 7-8 3"``: a run order, readable at a glance."""
    parts: list[list[int]] = []
    for n in numbers:
        if parts and n == parts[-1][1] + 1:
            parts[-1][1] = n
        else:
            parts.append([n, n])
    return " ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)


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


# -- f: a session owner frozen past its lease ------------------------------------------------------


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

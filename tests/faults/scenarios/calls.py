"""What became of a scenario's calls: sent with unique tokens, answered, tallied.

See the package's docstring for what *done*, *errored*, *stranded*,
*duplicated* and *lost* mean.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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

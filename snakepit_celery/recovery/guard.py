"""The check a pool task makes before its call reaches a bridge.

For a message this worker took from a pool queue, the hook asks the ledger
whether the call may begin here, and records that it does, before anything
reaches a bridge.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
from celery.exceptions import Ignore
from celery.states import READY_STATES

from snakepit_celery.errors import WorkerLost
from snakepit_celery.recovery.ledger import CallLedger

__all__ = ["begin_hook", "begin_now", "set_ledger"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_ledger: CallLedger | None = None


def set_ledger(ledger: CallLedger | None) -> None:
    """Make ``ledger`` the one the pool tasks of this process check (the session step's)."""
    global _ledger
    with _lock:
        _ledger = ledger


def begin_hook(task: Any, *, idempotent: bool = False) -> Callable[[], None] | None:
    """What the task calls when its call is about to reach a bridge; None when
    the message is not one this worker took from a pool queue (a session call,
    an eager call, a worker without a ledger): nothing to check then.

    ``execute`` hands it to the pool, which calls it once a bridge is checked
    out, so a call still waiting for a bridge when its worker dies has not
    begun; streams and batches call it as they start.

    The hook raises:
        WorkerLost: the call began on a worker that died (and is not
            idempotent, or was already run again once), or dead workers
            took it ``max_deliveries`` times.
        celery.exceptions.Ignore: this copy must not run (this worker already
            runs it, its message was put back for another worker while this one
            stalled, or the lost call's result is already stored); nothing is
            stored, the message is acknowledged.
    """
    ledger = _ledger
    task_id = task.request.id
    tag = ledger.holds(task_id) if ledger is not None and task_id else None
    if ledger is None or tag is None:
        return None

    def begin() -> None:
        assert ledger is not None and tag is not None
        try:
            verdict, detail = ledger.begin(task_id, tag, idempotent=idempotent)
        except redis.RedisError as exc:
            # Better to run than to refuse: only a death before the record is back can
            # now make this call run twice (or be answered WorkerLost although it ran).
            log.warning("snakepit: %s[%s] runs without its recovery record: %s", task.name, task_id, exc)
            return
        if verdict in ("mine", "stale"):
            log.info("snakepit: %s[%s] not run here (%s)", task.name, task_id, verdict)
            raise Ignore()
        if verdict != "ok" and task.AsyncResult(task_id).state in READY_STATES:
            log.info(
                "snakepit: %s[%s] redelivered after its result was stored; not run again", task.name, task_id
            )
            raise Ignore()
        if verdict in ("lost", "poison"):
            raise _lost(task, verdict, detail)
        if verdict == "rerun":
            log.warning(
                "snakepit: %s[%s] began on %s, which died; idempotent: run again", task.name, task_id, detail
            )

    return begin


def begin_now(task: Any, *, idempotent: bool = False) -> None:
    """Check and record, now, that the task's call begins (streams, batches)."""
    begin = begin_hook(task, idempotent=idempotent)
    if begin is not None:
        begin()


def _lost(task: Any, verdict: str, detail: str) -> WorkerLost:
    if verdict == "lost":
        return WorkerLost(
            f"{task.name}[{task.request.id}]: worker {detail} died (or lost its broker) while "
            "running this call; it may have run in part or whole, so it is not run again "
            "(send it with idempotent=True to have it rerun once)",
            detail,
        )
    return WorkerLost(
        f"{task.name}[{task.request.id}]: taken by {detail} workers that died before running it; "
        "not offered again (max_deliveries)",
        "",
    )

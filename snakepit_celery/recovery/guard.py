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


def begin_hook(task: Any, *, idempotent: bool = False) -> Callable[[], Callable[[], None] | None] | None:
    """What the task calls when its call is about to reach a bridge; None when
    the message is not one this worker took from a pool queue (a session call,
    an eager call, a worker without a ledger): nothing to check then.

    ``execute`` hands it to the pool, which calls it once a bridge is checked
    out, so a call still waiting for a bridge when its worker dies has not
    begun; streams and batches call it as they start. A first delivery on a
    worker surely holding its lease does not wait for the ledger's verdict
    (see :mod:`.ledger`): the hook then returns a function the pool calls when
    the call is over, which reads it.

    The hook raises:
        WorkerLost: the call began on a worker that died (and is not
            idempotent, or was already run again once), or dead workers
            took it ``max_deliveries`` times.
        celery.exceptions.Ignore: this copy must not run (this worker already
            runs it, its message was put back for another worker while this one
            stalled, or the lost call's result is already stored); nothing is
            stored, the message is acknowledged.
    """
    held = _held(task)
    if held is None:
        return None
    ledger, tag = held
    task_id = task.request.id
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))

    def begin() -> Callable[[], None] | None:
        try:
            verdict = None if redelivered else ledger.begin_behind(task_id, tag, idempotent=idempotent)
            if verdict is not None:
                if ledger.lease_sure():  # still: the record went out before any claim
                    return lambda: _after(task, verdict)
                _judge(task, *verdict())  # a stall meanwhile: the verdict first
                return None
            _judge(task, *ledger.begin(task_id, tag, idempotent=idempotent))
        except redis.RedisError as exc:
            _unrecorded(task, exc)
        return None

    return begin


def _judge(task: Any, verdict: str, detail: str) -> None:
    """Act on the ledger's verdict before the call reaches its bridge."""
    task_id = task.request.id
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


def _after(task: Any, verdict: Callable[[], tuple[str, str]]) -> None:
    """Read the verdict of a call that did not wait for it; never raises (the call is over)."""
    try:
        found, detail = verdict()
    except Exception as exc:
        log.warning(
            "snakepit: %s[%s] ran; its recovery record may be missing: %s", task.name, task.request.id, exc
        )
        return
    if found != "ok":  # only a message sent twice under one task id gets here
        log.warning(
            "snakepit: %s[%s] ran although the call ledger said %r (%s): its task id was sent twice?",
            task.name,
            task.request.id,
            found,
            detail,
        )


def begin_now(task: Any, *, idempotent: bool = False) -> None:
    """Check and record, now, that the task's call begins (streams, batches)."""
    held = _held(task)
    if held is None:
        return
    ledger, tag = held
    try:
        verdict = ledger.begin(task.request.id, tag, idempotent=idempotent)
    except redis.RedisError as exc:
        _unrecorded(task, exc)
        return
    _judge(task, *verdict)


def _held(task: Any) -> tuple[CallLedger, str] | None:
    """This worker's ledger and the delivery tag of the task's message, if it holds one."""
    ledger, task_id = _ledger, task.request.id
    tag = ledger.holds(task_id) if ledger is not None and task_id else None
    return None if ledger is None or tag is None else (ledger, tag)


def _unrecorded(task: Any, exc: Exception) -> None:
    # Better to run than to refuse: only a death before the record is back can
    # now make this call run twice (or be answered WorkerLost although it ran).
    log.warning("snakepit: %s[%s] runs without its recovery record: %s", task.name, task.request.id, exc)


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

"""The worker's side of payload references: fetched before a task runs, deleted after.

The message serializer (:mod:`.codec`) decodes a reference as a
:class:`~.codec.PayloadRef` of a few bytes. In ``task_prerun``, in the task's
own thread, the references in its arguments are fetched (one MGET) and put in
their place; in ``task_postrun`` they are deleted, unless the message comes
again (rejected, retried, ignored). ``snakepit.execute`` is the exception: its
arguments keep the references and the pool fetches them as it builds the
bridge's request (:func:`fetch_waiting`, handed to ``BridgePool.execute`` as
``resolve_args``), so a big payload lives in that request alone, not also in
Celery's arguments for the whole call.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from snakepit_bridge.wire import NDArray, WireError

from snakepit_celery.errors import InvalidArguments
from snakepit_celery.payloads.arrays import PendingArray
from snakepit_celery.payloads.codec import PayloadRef, fetch_refs, replace_refs, store_of, thread_state
from snakepit_celery.payloads.store import expired, prefix_of

__all__ = ["fetch_waiting"]

log = logging.getLogger("snakepit_celery.payloads.codec")  # the name these messages always had

#: Task states after which a message comes again (or already did): its payloads stay.
_COMES_AGAIN = frozenset({"IGNORED", "RETRY", "REJECTED"})
#: Tasks whose payloads wait in Redis until the bridge's request is built (:func:`fetch_waiting`).
_FETCHED_LATE = frozenset({"snakepit.execute"})


def _refs_in(value: Any, into: list[PayloadRef]) -> list[PayloadRef]:
    if isinstance(value, PayloadRef):
        into.append(value)
    elif isinstance(value, PendingArray):
        into.append(value.ref)
    elif isinstance(value, dict):
        for item in value.values():
            _refs_in(item, into)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _refs_in(item, into)
    return into


def fetch_waiting(value: Any) -> Any:
    """``value`` with the payloads the running task left waiting fetched; else ``value`` itself.

    Only ``snakepit.execute`` leaves them waiting (see ``_on_prerun``); the
    pool calls this as it builds the bridge's request, and drops the copy
    once the request holds the bytes. Each container on the way to a
    reference is copied, the task's own arguments are left as they came; an
    array comes as an :class:`NDArray`, whose buffer the wire sends as it is.
    Where the task has nothing waiting (every call but a big one's) this is
    one attribute read.

    Raises:
        PayloadExpired: a payload is gone (past its TTL): the call never runs.
        InvalidArguments: an array's dtype or shape does not fit its bytes.
    """
    if not getattr(thread_state, "waiting", False):
        return value
    refs = _refs_in(value, [])
    if not refs:
        return value
    found = fetch_refs(refs, delete=False)
    gone = next((ref for ref in refs if found.get(ref.key) is None), None)
    if gone is not None:
        raise expired(gone.key, gone.size)
    try:
        return _fetched(value, found)
    except WireError as exc:
        raise InvalidArguments(f"arguments: {exc}") from None


def _fetched(value: Any, found: dict[str, bytes | None]) -> Any:
    if isinstance(value, PayloadRef):
        return found[value.key]
    if isinstance(value, PendingArray):
        data = found[value.ref.key]
        assert data is not None
        return NDArray(value.dtype, tuple(value.shape), data)
    if isinstance(value, dict):
        return {key: _fetched(item, found) for key, item in value.items()}
    if isinstance(value, list):
        return [_fetched(item, found) for item in value]
    if isinstance(value, tuple):
        return tuple(_fetched(item, found) for item in value)
    return value


def _on_prerun(
    sender: Any = None, task_id: str | None = None, args: Any = None, kwargs: Any = None, **_: Any
) -> None:
    thread_state.taken = None
    thread_state.waiting = False
    decoded = thread_state.__dict__.pop("decoded", None)
    if decoded is not None and not decoded:
        return  # the message this thread just decoded had none (the common case: no walk)
    refs = _refs_in(kwargs, _refs_in(args, []))
    if not refs:
        return
    if getattr(sender, "name", None) in _FETCHED_LATE:
        thread_state.waiting = True
        thread_state.taken = (task_id, [ref.key for ref in refs])  # deleted after the call, as fetched ones
        return
    try:
        found = fetch_refs(refs, delete=False)
    except Exception as exc:  # a task must still run and answer, with the refs unresolved
        log.error("snakepit: task %s: cannot fetch its %d payload(s): %s", task_id, len(refs), exc)
        return
    replace_refs(args, found)
    replace_refs(kwargs, found)
    for ref in refs:
        if found.get(ref.key) is None:
            log.error("snakepit: task %s: %s", task_id, expired(ref.key, ref.size))
    thread_state.taken = (task_id, [key for key, data in found.items() if data is not None])


def _on_postrun(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    taken, thread_state.taken = getattr(thread_state, "taken", None), None
    thread_state.waiting = False
    if taken is None or taken[0] != task_id or state in _COMES_AGAIN or not taken[1]:
        return
    try:
        by_prefix: dict[str, list[str]] = {}
        for key in taken[1]:
            by_prefix.setdefault(prefix_of(key), []).append(key)
        for keys in by_prefix.values():
            store_of(keys[0]).delete(keys)
    except Exception as exc:  # their TTL removes them
        log.warning("snakepit: task %s: its payloads stay until their TTL: %s", task_id, exc)


signals.task_prerun.connect(_on_prerun, weak=False)
signals.task_postrun.connect(_on_postrun, weak=False)

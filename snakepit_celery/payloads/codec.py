"""The two kombu serializers that move big ``bytes`` out of messages and results.

Both write kombu's JSON (what Celery's ``json`` writes, bytes and datetimes
included) except that a ``bytes`` value longer than the app's
``payload_ref_threshold`` is stored in the snakepit Redis and written as
``{"__type__": "snakepit_ref", "__value__": [key, size]}``:

* ``snakepit`` (``application/x-snakepit+json``), the task messages'. Decoding
  one gives a :class:`PayloadRef` per reference, a few bytes, so a message
  the worker's consumer prefetches holds no payload; the worker fetches them
  (one MGET) in ``task_prerun``, in the task's own thread, right before the
  task runs, and deletes them once the task has finished (``task_postrun``).
  ``snakepit.execute`` fetches its own later, as it builds the bridge's
  request (:func:`.taskrun.fetch_waiting`): its arguments keep the references, so
  the bytes live in that request alone, not also in Celery's arguments for
  the whole call.
  A call that is rejected, retried or ignored keeps them for its next copy,
  as a call whose worker died does; their TTL removes what is never run.
* ``snakepit-result`` (``application/x-snakepit-result+json``), the result
  backend's. Decoding one fetches and deletes its payloads at once (the
  caller's ``.get()``, a chord's join, ``batch_map``), so a result's big bytes
  are read once. A result whose payload is gone (read already, or past its
  TTL) decodes as the failure :class:`~snakepit_celery.errors.PayloadExpired`:
  Celery's Redis result consumer may decode one stored result twice (once
  from the key, once from the pub/sub message) and must not fail on the copy.

The sending app is the task's (:func:`sending`, around ``PoolTask.apply_async``),
else the one whose prefix the routing key names (``<prefix>.pool.*``,
``<prefix>.session.*``), else the current app, else the only installed one; a
reference is read from the store of its key's prefix.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery, signals
from kombu.serialization import register
from kombu.utils import json as kombu_json
from snakepit_bridge.wire import NDArray

from snakepit_celery.appconfig import app_or_current
from snakepit_celery.errors import ConfigurationError, PayloadTooLarge
from snakepit_celery.payloads.arrays import PendingArray, build, encode_array
from snakepit_celery.payloads.store import PayloadStore, expired, prefix_of, store_for_app, store_for_prefix

__all__ = [
    "MESSAGE_CONTENT_TYPE",
    "MESSAGE_SERIALIZER",
    "RESULT_CONTENT_TYPE",
    "RESULT_SERIALIZER",
    "PayloadRef",
    "complete_result",
    "fetch_refs",
    "parse_result",
    "register_app",
    "replace_refs",
    "sending",
]

log = logging.getLogger(__name__)

MESSAGE_SERIALIZER = "snakepit"
MESSAGE_CONTENT_TYPE = "application/x-snakepit+json"
RESULT_SERIALIZER = "snakepit-result"
RESULT_CONTENT_TYPE = "application/x-snakepit-result+json"
REF_TYPE = "snakepit_ref"
_MARK = '"snakepit_ref"'

_apps: weakref.WeakSet[Celery] = weakref.WeakSet()
#: Per thread: ``routing_key`` of the message being published, ``decoded`` (the refs of
#: the message the task thread just decoded), ``taken`` (those the running task fetched,
#: or will) and ``waiting`` (the running task fetches its own: :func:`fetch_waiting`).
thread_state = threading.local()


class PayloadRef:
    """A call's ``bytes`` value waiting in the snakepit Redis, until the worker fetches it."""

    __slots__ = ("key", "size")

    def __init__(self, key: str, size: int) -> None:
        self.key = key
        self.size = size

    def __repr__(self) -> str:
        return f"<snakepit payload of {self.size} bytes>"


def register_app(app: Celery) -> None:
    """Let ``app``'s messages and results carry references (``install`` calls it)."""
    _apps.add(app)


_sending_app: contextvars.ContextVar[Celery | None] = contextvars.ContextVar(
    "snakepit_sending_app", default=None
)


@contextmanager
def sending(app: Celery) -> Iterator[None]:
    """Messages published meanwhile are ``app``'s (its store, its pools' limits)."""
    token = _sending_app.set(app)
    try:
        yield
    finally:
        _sending_app.reset(token)


def _marker(key: str, size: int) -> dict[str, Any]:
    return {"__type__": REF_TYPE, "__value__": [key, size]}


def _kombu_loads(data: Any, hook: Callable[[dict[str, Any]], Any] | None = None) -> Any:
    if hook is None:
        return kombu_json.loads(data)  # type: ignore[no-untyped-call]
    return kombu_json.loads(data, object_hook=hook)  # type: ignore[no-untyped-call]


class _Encoder(kombu_json.JSONEncoder):
    """kombu's encoder; big bytes become references, to be stored once the document is done."""

    def __init__(
        self,
        *,
        store: PayloadStore | None,
        pending: list[tuple[str, bytes]],
        copy_refs: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.store, self.pending, self.copy_refs = store, pending, copy_refs

    def default(self, o: Any) -> Any:
        if self.copy_refs and isinstance(o, (PayloadRef, PendingArray)):
            # An argument still waiting (a result's meta holds the arguments with
            # ``result_extended``): its own copy, as its bytes would have had; the
            # call's key goes when the call ends.
            ref = o if isinstance(o, PayloadRef) else o.ref
            data = store_of(ref.key).get([ref.key])[0]
            if data is not None:
                return (
                    data
                    if isinstance(o, PayloadRef)
                    else encode_array(NDArray(o.dtype, tuple(o.shape), data))
                )
        if isinstance(o, PayloadRef):  # e.g. in a chain's later step, passed on as it came
            return _marker(o.key, o.size)
        store = self.store
        if store is not None and isinstance(o, bytes) and len(o) > store.threshold:
            key = store.new_key()
            self.pending.append((key, o))
            return _marker(key, len(o))
        array = encode_array(o)  # a numpy array: its buffer as bytes (so maybe by reference)
        if array is not None:
            return array
        return super().default(o)  # type: ignore[no-untyped-call]


def _encode(
    value: Any, store: PayloadStore | None, *, copy_refs: bool = False
) -> tuple[str, list[tuple[str, bytes]]]:
    pending: list[tuple[str, bytes]] = []
    text = json.dumps(value, cls=_Encoder, store=store, pending=pending, copy_refs=copy_refs)
    return text, pending


def _installed_store() -> PayloadStore | None:
    apps = list(_apps)
    current = app_or_current()
    if current in apps:
        return store_for_app(current)
    return store_for_app(apps[0]) if len(apps) == 1 else None


def _sending_store(pool: object) -> PayloadStore | None:
    routing_key = getattr(thread_state, "routing_key", None)
    thread_state.routing_key = None
    app = _sending_app.get()
    if app is not None and app in _apps:
        return store_for_app(app)
    if isinstance(routing_key, str) and (".pool." in routing_key or ".session." in routing_key):
        store = store_for_prefix(routing_key.split(".", 1)[0], list(_apps), pool)
        if store is not None:
            return store
    return _installed_store()


def dumps_message(body: Any) -> str:
    """A task message (``[args, kwargs, embed]``): big bytes stored, unless over the pool's limit.

    Raises:
        PayloadTooLarge: the arguments are over the ``max_payload_bytes`` of the
            message's pool; nothing was stored (kombu wraps it in ``EncodeError``).
    """
    kwargs = body[1] if isinstance(body, (list, tuple)) and len(body) > 1 else None
    pool = kwargs.get("pool") if isinstance(kwargs, dict) else None
    store = _sending_store(pool)
    text, pending = _encode(body, store)
    if pending:
        assert store is not None
        limit = store.limit(pool)
        size = len(text) + sum(len(data) for _, data in pending)
        if size > limit:
            where = f" of pool {pool!r}" if isinstance(pool, str) else ""
            raise PayloadTooLarge(
                f"arguments are {size} bytes, over the limit of {limit} bytes (max_payload_bytes{where})"
            )
        store.put(pending)
    return text


def dumps_result(meta: Any) -> str:
    """A stored result, or a chord's entry of one: big bytes stored.

    Each encoding stores its own copy: the caller's result consumer reads (and
    so deletes) the results of the tasks it sent, a chord's header among them,
    while the chord's join reads its own entries.
    """
    store = _installed_store()
    text, pending = _encode(meta, store, copy_refs=store is not None)
    if pending:
        assert store is not None
        store.put(pending)
    return text


def _has_refs(data: Any) -> bool:
    if isinstance(data, (bytes, bytearray)):
        return _MARK.encode() in data
    return isinstance(data, str) and _MARK in data


def _hook(refs: list[PayloadRef]) -> Callable[[dict[str, Any]], Any]:
    def hook(o: dict[str, Any]) -> Any:
        if o.get("__type__") == REF_TYPE and o.keys() == {"__type__", "__value__"}:
            key, size = o["__value__"]
            ref = PayloadRef(str(key), int(size))
            refs.append(ref)
            return ref
        return kombu_json.object_hook(o)

    return hook


def loads_message(data: Any) -> Any:
    """A task message, each reference a :class:`PayloadRef` (fetched in ``task_prerun``)."""
    if not _has_refs(data):
        thread_state.decoded = []
        return _kombu_loads(data)
    refs: list[PayloadRef] = []
    body = _kombu_loads(data, _hook(refs))
    thread_state.decoded = refs  # the task thread's decode comes right before its task_prerun
    return body


def store_of(key: str) -> PayloadStore:
    store = store_for_prefix(prefix_of(key), list(_apps))
    if store is None:
        raise ConfigurationError(
            f"payload_ref: no installed app with queue prefix {prefix_of(key)!r} and a Redis reads {key}"
        )
    return store


def fetch_refs(refs: list[PayloadRef], *, delete: bool) -> dict[str, bytes | None]:
    found: dict[str, bytes | None] = {}
    by_store: dict[int, tuple[PayloadStore, list[str]]] = {}
    for ref in refs:
        store = store_of(ref.key)
        by_store.setdefault(id(store), (store, []))[1].append(ref.key)
    for store, keys in by_store.values():
        values = store.take(keys) if delete else store.get(keys)
        found.update(zip(keys, values, strict=True))
    return found


def replace_refs(value: Any, found: dict[str, bytes | None]) -> Any:
    """``value`` with each PayloadRef whose bytes were found replaced, containers changed in place."""
    if isinstance(value, PayloadRef):
        data = found.get(value.key)
        return value if data is None else data
    if isinstance(value, PendingArray):
        data = found.get(value.ref.key)
        return value if data is None else build(value.dtype, value.shape, data)
    if isinstance(value, dict):
        for k, item in value.items():
            if isinstance(item, (PayloadRef, PendingArray, dict, list)):
                value[k] = replace_refs(item, found)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, (PayloadRef, PendingArray, dict, list)):
                value[i] = replace_refs(item, found)
    return value


def loads_result(data: Any) -> Any:
    """A stored result, its payloads fetched and deleted; one gone makes it a PayloadExpired failure.

    Raises:
        PayloadExpired: a payload of a chord's entry is gone (not a result: no failure to give).
    """
    value, refs = parse_result(data)
    if not refs:
        return value
    return complete_result(value, refs, fetch_refs(refs, delete=True))


def parse_result(data: Any) -> tuple[Any, list[PayloadRef]]:
    """A stored result parsed, and the references in it, their payloads not fetched yet.

    The async callers (:mod:`snakepit_celery.aio`) fetch them on their own
    connection, then call :func:`complete_result`; :func:`loads_result` is both.
    """
    if not _has_refs(data):
        return _kombu_loads(data), []
    refs: list[PayloadRef] = []
    return _kombu_loads(data, _hook(refs)), refs


def complete_result(value: Any, refs: list[PayloadRef], found: dict[str, bytes | None]) -> Any:
    """``value`` (from :func:`parse_result`) with its payloads in place (``found``: key -> bytes,
    None for one that is gone); a payload gone makes a stored result the failure PayloadExpired.

    Raises:
        PayloadExpired: a payload of a chord's entry is gone (not a result: no failure to give).
    """
    gone = next((ref for ref in refs if found.get(ref.key) is None), None)
    if gone is None:
        return replace_refs(value, found)
    error = expired(gone.key, gone.size)
    if isinstance(value, dict) and "status" in value and "task_id" in value:
        failure = {
            "exc_type": type(error).__name__,
            "exc_message": list(error.args),
            "exc_module": type(error).__module__,
        }
        return {**value, "status": "FAILURE", "result": failure, "traceback": None}
    raise error


def _on_publish(routing_key: str | None = None, **_: Any) -> None:
    thread_state.routing_key = routing_key  # read by the dumps of this very message, in this thread


def _on_published(**_: Any) -> None:
    thread_state.routing_key = None  # a message another serializer wrote leaves no key for the next


signals.before_task_publish.connect(_on_publish, weak=False)
signals.after_task_publish.connect(_on_published, weak=False)
register(MESSAGE_SERIALIZER, dumps_message, loads_message, content_type=MESSAGE_CONTENT_TYPE)  # type: ignore[no-untyped-call]
register(RESULT_SERIALIZER, dumps_result, loads_result, content_type=RESULT_CONTENT_TYPE)  # type: ignore[no-untyped-call]

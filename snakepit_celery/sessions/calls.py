"""Which tasks run in a session, and how a session call is read out of a message.

Three tasks can run in a session: ``execute_in_session`` always, and
``execute_stream`` and ``execute_batch`` when they are given ``session_id``. All
three take one road, so none of them can skip a step: the caller's side sends
them through :meth:`SessionRouter.send <snakepit_celery.sessions.routing.SessionRouter.send>`
(validated, routed, journalled, published to the session's queue) and the
owner runs them inside :meth:`SessionManager.turn
<snakepit_celery.sessions.manager.SessionManager.turn>` (their place in the
session's line, the ownership check, the journal entry taken out, counted as
in flight). This module is what those two need to know about the three tasks.
"""

from __future__ import annotations

from typing import Any

from snakepit_celery.config import NAME_RE
from snakepit_celery.errors import InvalidArguments
from snakepit_celery.sessions.ids import validate_session_id
from snakepit_celery.sessions.wirejson import dumps, loads

__all__ = [
    "REPLAYED_OPTIONS",
    "SESSION_TASKS",
    "TASK_NAME",
    "journal_entry",
    "parse_call",
    "parse_session_call",
    "read_journal_entry",
    "session_id_of",
]

#: ``execute_in_session``: every message of it is a session call.
TASK_NAME = "snakepit.execute_in_session"
#: Every task whose message is a session call when it names a session.
SESSION_TASKS = frozenset({TASK_NAME, "snakepit.execute_stream", "snakepit.execute_batch"})

_CALL_NAMES = ("session_id", "command", "args")


def session_id_of(task_name: str | None, args: Any, kwargs: Any) -> str | None:
    """The session id of a message of ``task_name`` (None: not a session call)."""
    if task_name not in SESSION_TASKS:
        return None
    if isinstance(kwargs, dict) and isinstance(kwargs.get("session_id"), str):
        return str(kwargs["session_id"])
    if task_name == TASK_NAME and args and isinstance(args[0], str):
        return str(args[0])
    return None


def parse_call(args: Any, kwargs: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """Validate an ``execute_in_session`` call before anything is sent.

    Returns:
        The session id and the call's keyword arguments (all of them by name).

    Raises:
        InvalidSessionId: the session id is unfit for a queue name or a key.
        InvalidArguments: no command, or a malformed call.
    """
    named = dict(kwargs or {})
    positional = list(args or ())
    if len(positional) > len(_CALL_NAMES):
        raise InvalidArguments(
            f"execute_in_session takes (session_id, command, args); got {len(positional)} positional values"
        )
    for name, value in zip(_CALL_NAMES, positional, strict=False):
        if name in named:
            raise InvalidArguments(f"execute_in_session got {name!r} twice")
        named[name] = value
    session_id = validate_session_id(named.get("session_id"))
    command = named.get("command")
    if not isinstance(command, str) or not command:
        raise InvalidArguments(f"execute_in_session needs a command name, not {command!r}")
    _check_pool(named.get("pool"))
    return session_id, named


def parse_session_call(
    task_name: str, args: Any, kwargs: dict[str, Any] | None
) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """Validate a session call of any of :data:`SESSION_TASKS` before anything is sent.

    Returns:
        The session id, and the args and kwargs to publish.

    Raises:
        InvalidSessionId: the session id is missing or unfit.
        InvalidArguments: a malformed call, or a task that cannot run in a session.
    """
    if task_name == TASK_NAME:
        session_id, named = parse_call(args, kwargs)
        return session_id, (), named
    if task_name not in SESSION_TASKS:
        raise InvalidArguments(f"{task_name} cannot run in a session")
    named = dict(kwargs or {})
    named["session_id"] = session_id = validate_session_id(named.get("session_id"))
    _check_pool(named.get("pool"))
    return session_id, tuple(args or ()), named


def _check_pool(pool: Any) -> None:
    if pool is not None and not (isinstance(pool, str) and NAME_RE.match(pool)):
        raise InvalidArguments(f"pool {pool!r} must match {NAME_RE.pattern}")


#: Sending options a republished call keeps: what runs after it (callbacks, the
#: rest of a chain, the chord it belongs to) and where it sits in its workflow.
#: Without them a chord whose header call was lost in flight would never finish.
REPLAYED_OPTIONS = ("link", "link_error", "chain", "chord", "group_id", "group_index", "root_id", "parent_id")


def journal_entry(
    task_name: str, args: Any, kwargs: dict[str, Any], options: dict[str, Any] | None = None
) -> str:
    """The journal's record of a call: enough to publish it again as it was sent."""
    entry: dict[str, Any] = {"task": task_name, "args": list(args or ()), "kwargs": kwargs}
    kept = {key: options[key] for key in REPLAYED_OPTIONS if options and options.get(key) is not None}
    if kept:
        entry["options"] = kept
    return dumps(entry)


def read_journal_entry(raw: str, session_id: str) -> tuple[str, list[Any], dict[str, Any], dict[str, Any]]:
    """A journal record back as (task name, args, kwargs, sending options).

    Also reads the older ``[command, args, options]`` records of
    ``execute_in_session``, which a caller of the previous version may have left.
    """
    found = loads(raw)
    if isinstance(found, dict):
        return (
            str(found["task"]),
            list(found.get("args") or ()),
            dict(found.get("kwargs") or {}),
            dict(found.get("options") or {}),
        )
    command, args, options = found
    return TASK_NAME, [session_id, command, args], dict(options), {}

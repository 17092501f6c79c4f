"""The handler SDK: subclass :class:`Handler`, mark methods with :func:`command`.

A command receives the call's JSON argument object as keyword arguments and
returns a JSON-able value. A generator (or async generator) method is a stream
command: each value it yields is one chunk. An ``async def`` method is awaited
on the bridge's event loop thread. ``self.context`` is the running call's
:class:`CallContext` (kept in a context variable, so concurrent calls never
see each other's context).

Example::

    from snakepit_bridge import Handler, command

    class Greeter(Handler):
        @command
        def hello(self, name: str) -> dict:
            self.context.session["greeted"] = name
            return {"greeting": f"hello {name}"}

        @command(name="count.up", doc="Count from 0, one chunk per number.")
        def count_up(self, to: int = 3):
            yield from ({"n": n} for n in range(to))

This module imports no gRPC: a handler module (and a zygote that preloads it)
stays free of gRPC objects until the server starts.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

__all__ = [
    "BridgeStats",
    "CallContext",
    "CommandSpec",
    "Handler",
    "InvalidArguments",
    "NoCallContext",
    "command",
]

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute :func:`command` sets on a method to mark it.
MARK = "__snakepit_command__"


class InvalidArguments(ValueError):
    """Raise from a command to refuse its input (sent as INVALID_ARGUMENTS, not a crash)."""


class NoCallContext(LookupError):
    """``Handler.context`` was read outside a command call."""


@dataclass(frozen=True)
class CommandSpec:
    """What :func:`command` records on a method: its wire name and its doc."""

    name: str | None = None
    doc: str | None = None


@dataclass(slots=True)
class CallContext:
    """The running call, as a command sees it through ``self.context``."""

    #: The caller's session id; None for a stateless call.
    session_id: str | None
    #: Per-session state; stateless calls share one bridge-global dict.
    session: dict[str, Any]
    #: The caller's id for this call (a Celery task id), or None.
    request_id: str | None = None
    #: ``time.monotonic()`` value of the soft deadline, or None for none.
    deadline: float | None = None
    #: Set when the caller cancelled (or went away); long steps may poll it.
    cancelled: threading.Event = field(default_factory=threading.Event)

    def remaining(self) -> float | None:
        """Seconds left before the soft deadline (never negative), or None."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


@dataclass(slots=True)
class BridgeStats:
    """Counters the server keeps for the handler to report (e.g. in an ``info`` command).

    Updated without a lock: exact for sequential calls, close under concurrency.
    """

    #: ``time.monotonic()`` when the bridge started serving.
    started_at: float = field(default_factory=time.monotonic)
    #: Execute and ExecuteStream calls received.
    requests: int = 0
    #: Calls that ended in an error status.
    errors: int = 0
    #: Stream commands started, and those whose generator has been closed.
    streams_started: int = 0
    streams_closed: int = 0
    #: Sessions started and ended on this bridge.
    sessions_started: int = 0
    sessions_ended: int = 0
    #: Sessions running now.
    sessions_active: int = 0


_current: contextvars.ContextVar[CallContext] = contextvars.ContextVar("snakepit_call_context")


def current_context() -> CallContext:
    """The running call's context.

    Raises:
        NoCallContext: no command call is running in this context.
    """
    try:
        return _current.get()
    except LookupError:
        raise NoCallContext(
            "no snakepit call is running here; context exists only inside a command"
        ) from None


def set_context(ctx: CallContext) -> contextvars.Token[CallContext]:
    """Make ``ctx`` the running call's context (the server does this per call)."""
    return _current.set(ctx)


def reset_context(token: contextvars.Token[CallContext]) -> None:
    _current.reset(token)


@overload
def command(func: F, /) -> F: ...
@overload
def command(*, name: str | None = None, doc: str | None = None) -> Callable[[F], F]: ...
def command(
    func: F | None = None, /, *, name: str | None = None, doc: str | None = None
) -> F | Callable[[F], F]:
    """Mark a handler method as a command, bare (``@command``) or with options.

    Args:
        func: the method (when used bare).
        name: the wire name (default: the method's name); may contain dots.
        doc: the description Describe reports (default: the docstring's first line).
    """

    def mark(target: F) -> F:
        setattr(target, MARK, CommandSpec(name=name, doc=doc))
        return target

    if func is not None:
        return mark(func)
    return mark


class Handler:
    """Base of every handler: the commands a bridge serves.

    The bridge builds one instance with no arguments and serves it from many
    threads at once, so keep shared state thread-safe or per session.
    """

    #: Modules the generic call API may import (set by the server from
    #: ``--allow-module``); empty means none.
    allowed_modules: frozenset[str] = frozenset()
    #: The bridge's counters (the server replaces it with the live one).
    stats: BridgeStats = BridgeStats()

    @property
    def context(self) -> CallContext:
        """The running call's :class:`CallContext`."""
        return current_context()

    def on_session_start(self, session_id: str, state: dict[str, Any], data: Any) -> None:
        """Called once per session on this bridge, before its first call.

        Args:
            session_id: the session.
            state: the session's (empty) state dict, to fill.
            data: the stored session data sent with InitSession, or None.
        """

    def on_session_end(self, session_id: str, state: dict[str, Any]) -> None:
        """Called once when the session ends on this bridge (or the bridge stops)."""

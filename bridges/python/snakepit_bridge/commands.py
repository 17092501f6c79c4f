"""The command table of a handler: discovery, argument binding, failures.

Binding is checked before the call, against a signature read once at startup,
so a wrong name is answered as INVALID_ARGUMENTS naming it (and never turns
into a TypeError that looks like the command's own bug).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from snakepit_bridge.handler import MARK, CommandSpec, Handler, InvalidArguments

__all__ = ["Command", "Failure", "HandlerDefinitionError", "discover", "failure_from"]

#: The ErrorDetail.Kind names a failure may carry.
KINDS = frozenset(
    {"COMMAND_ERROR", "UNKNOWN_COMMAND", "INVALID_ARGUMENTS", "TIMEOUT", "CANCELLED", "SESSION_ERROR"}
)


class HandlerDefinitionError(TypeError):
    """A handler class cannot be served as written (duplicate names, bad signature)."""


class Failure(Exception):
    """A call that ends in an error status; the server turns it into ErrorDetail."""

    def __init__(self, kind: str, type_name: str, message: str, tb: str = "") -> None:
        super().__init__(kind, type_name, message, tb)
        assert kind in KINDS, kind
        self.kind = kind
        self.type_name = type_name
        self.message = message
        self.traceback = tb

    def __str__(self) -> str:
        return f"{self.kind}: {self.type_name}: {self.message}"


_HERE = os.path.dirname(os.path.abspath(__file__))
#: Frames of these files at the top of a traceback are the bridge's plumbing.
_PLUMBING = (
    *(
        os.path.join(_HERE, name)
        for name in (
            "commands.py",
            "calls.py",
            "service.py",
            "batch.py",
            "streams.py",
            "aio.py",
            "sessions.py",
        )
    ),
    os.path.dirname(os.path.abspath(concurrent.futures.__file__)) + os.sep,
    os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep,
)


def _user_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """Skip the leading frames of the bridge's own call path (all of it if nothing else is left)."""
    first = tb
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PLUMBING):
        tb = tb.tb_next
    return tb if tb is not None else first


def failure_from(exc: BaseException, command: str) -> Failure:
    """Classify an exception a command raised."""
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, InvalidArguments):
        return Failure("INVALID_ARGUMENTS", "InvalidArguments", f"command {command!r}: {exc}")
    text = "".join(traceback.format_exception(type(exc), exc, _user_frames(exc.__traceback__)))
    return Failure("COMMAND_ERROR", type(exc).__qualname__, str(exc), text)


def _quoted(names: Any) -> str:
    return ", ".join(repr(name) for name in sorted(names))


@dataclass(frozen=True, slots=True)
class Command:
    """One command: the bound method and what is needed to call it."""

    name: str
    method: Callable[..., Any]
    doc: str
    #: A generator or async generator: served by ExecuteStream.
    stream: bool
    #: Runs on the event loop (``async def`` or async generator).
    is_async: bool
    params: frozenset[str]
    required: frozenset[str]
    #: Takes ``**kwargs``: any name is accepted.
    var_kw: bool

    def bind(self, args: Any) -> dict[str, Any]:
        """Check ``args`` against the signature; return the keyword arguments.

        Raises:
            Failure: INVALID_ARGUMENTS naming what is wrong.
        """
        if args is None:
            args = {}
        elif type(args) is not dict:
            raise Failure(
                "INVALID_ARGUMENTS",
                "InvalidArguments",
                f"arguments of command {self.name!r} must be a JSON object, not {_json_type(args)}",
            )
        problems = []
        if self.required:
            missing = self.required - args.keys()
            if missing:
                problems.append(f"is missing required argument(s) {_quoted(missing)}")
        if not self.var_kw:
            unexpected = args.keys() - self.params
            if unexpected:
                takes = _quoted(self.params) if self.params else "no arguments"
                problems.append(f"got unexpected argument(s) {_quoted(unexpected)}; it takes {takes}")
        if problems:
            raise Failure(
                "INVALID_ARGUMENTS", "InvalidArguments", f"command {self.name!r} " + " and ".join(problems)
            )
        return args  # type: ignore[no-any-return]


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _spec_of(cls: type, attr: str) -> CommandSpec | None:
    """The command mark of ``attr``, looked up along the MRO (an override inherits it)."""
    for klass in cls.__mro__:
        value = vars(klass).get(attr)
        spec = getattr(value, MARK, None)
        if isinstance(spec, CommandSpec):
            return spec
    return None


def _make(handler: Handler, attr: str, spec: CommandSpec) -> Command:
    method = getattr(handler, attr)
    func = inspect.unwrap(getattr(method, "__func__", method))
    name = spec.name or attr
    params: set[str] = set()
    required: set[str] = set()
    var_kw = False
    for param in inspect.signature(method).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            var_kw = True
        elif param.kind is param.POSITIONAL_ONLY:
            if param.default is param.empty:
                raise HandlerDefinitionError(
                    f"command {name!r} ({type(handler).__qualname__}.{attr}): parameter "
                    f"{param.name!r} is positional-only, but commands take keyword arguments"
                )
        elif param.kind is not param.VAR_POSITIONAL:
            params.add(param.name)
            if param.default is param.empty:
                required.add(param.name)
    doc = spec.doc if spec.doc is not None else (inspect.getdoc(func) or "").strip().split("\n")[0]
    is_agen = inspect.isasyncgenfunction(func)
    return Command(
        name=name,
        method=method,
        doc=doc,
        stream=is_agen or inspect.isgeneratorfunction(func),
        is_async=is_agen or inspect.iscoroutinefunction(func),
        params=frozenset(params),
        required=frozenset(required),
        var_kw=var_kw,
    )


def discover(handler: Handler) -> dict[str, Command]:
    """Every command of ``handler``, by wire name.

    Raises:
        HandlerDefinitionError: two methods claim one name, or a signature cannot
            take keyword arguments.
    """
    cls = type(handler)
    attrs: list[str] = []
    for klass in cls.__mro__:
        attrs.extend(attr for attr in vars(klass) if attr not in attrs)
    table: dict[str, Command] = {}
    for attr in attrs:
        spec = _spec_of(cls, attr)
        if spec is None:
            continue
        cmd = _make(handler, attr, spec)
        if cmd.name in table:
            raise HandlerDefinitionError(
                f"{cls.__qualname__}: two methods are registered as command {cmd.name!r}"
            )
        table[cmd.name] = cmd
    return table

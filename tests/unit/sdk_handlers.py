"""Handlers the SDK tests serve from a real bridge (``--adapter sdk_handlers:SdkHandler``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from snakepit_bridge import Handler, InvalidArguments, command


class Boom(Exception):
    """A user exception whose name must reach the caller."""


class SdkHandler(Handler):
    """One command per SDK behaviour under test."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.closed: dict[str, int] = {}
        self.produced = 0
        self.async_cancelled = 0

    def _closed(self, name: str) -> None:
        with self.lock:
            self.closed[name] = self.closed.get(name, 0) + 1

    @command
    def counters(self) -> dict[str, Any]:
        """What the other commands recorded."""
        return {
            "closed": dict(self.closed),
            "produced": self.produced,
            "async_cancelled": self.async_cancelled,
        }

    @command(name="math.double", doc="Twice x.")
    def double(self, x: int) -> int:
        return x * 2

    @command
    def anything(self, first: int, **rest: Any) -> dict[str, Any]:
        return {"first": first, "rest": rest}

    @command
    def context_seen(self) -> dict[str, Any]:
        ctx = self.context
        ctx.session["calls"] = ctx.session.get("calls", 0) + 1
        return {
            "session_id": ctx.session_id,
            "request_id": ctx.request_id,
            "remaining": ctx.remaining(),
            "calls": ctx.session["calls"],
            "cancelled": ctx.cancelled.is_set(),
        }

    @command
    def refuse(self, value: Any) -> None:
        raise InvalidArguments(f"value {value!r} is not acceptable")

    @command
    def boom(self) -> None:
        raise Boom("it went boom")

    @command
    def unencodable(self) -> Any:
        return {"fine": 1, "bad": {1, 2}}

    @command
    async def async_add(self, a: int, b: int) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {
            "sum": a + b,
            "thread": threading.current_thread().name,
            "session_id": self.context.session_id,
        }

    @command
    async def async_sleep(self, seconds: float) -> str:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.async_cancelled += 1
            raise
        return "slept"

    @command
    async def async_boom(self) -> None:
        await asyncio.sleep(0)
        raise Boom("async boom")

    @command
    def numbers(self, count: int, fail_at: int = -1) -> Iterator[dict[str, int]]:
        """Count, optionally failing at one number."""
        try:
            for n in range(count):
                if n == fail_at:
                    raise Boom(f"failed at {n}")
                yield {"n": n}
        finally:
            self._closed("numbers")

    @command
    def endless(self, size: int = 10) -> Iterator[str]:
        """Chunks of ``size`` characters until cancelled; counts what it produced."""
        self.produced = 0
        try:
            while True:
                self.produced += 1
                yield "x" * size
        finally:
            self._closed("endless")

    @command
    async def async_numbers(self, count: int, pause: float = 0.0) -> AsyncIterator[dict[str, Any]]:
        """An async generator stream (count <= 0: until cancelled)."""
        try:
            n = 0
            while count <= 0 or n < count:
                yield {"n": n, "session_id": self.context.session_id}
                n += 1
                await asyncio.sleep(pause)
        finally:
            self._closed("async_numbers")

    def on_session_start(self, session_id: str, state: dict[str, Any], data: Any) -> None:
        if session_id.startswith("bad-"):
            raise Boom(f"session {session_id} refused")
        state["data"] = data


class DuplicateNames(Handler):
    @command(name="same")
    def one(self) -> None: ...

    @command(name="same")
    def two(self) -> None: ...


class NotAHandler:
    pass


class BrokenInit(Handler):
    def __init__(self) -> None:
        raise Boom("cannot start")

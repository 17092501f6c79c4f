"""The showcase handler: the seed's demo commands, served by default.

Every bridge language offers the same commands with the same fields, so the
contract tests and the demos run against any of them. Stream commands are
fast by default (small or no pauses) and take their pace from the arguments;
each one counts its cleanup, so a test can see (through ``info``) that a
cancelled generator was really closed.
"""

from __future__ import annotations

import math
import os
import platform
import random as _random
import threading
import time
import types
import uuid
from collections.abc import Iterator
from typing import Any

from snakepit_bridge.handler import Handler, InvalidArguments, command
from snakepit_bridge.programs import ProgramMixin
from snakepit_bridge.pycall import PythonCallMixin

__all__ = ["ShowcaseHandler"]

_OPERATIONS = ("add", "subtract", "multiply", "divide", "power", "sqrt")
_LOG_LEVELS = ("INFO", "INFO", "DEBUG", "WARNING", "INFO", "ERROR")


def _number(name: str, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArguments(f"{name} must be a number, not {type(value).__name__} {value!r}")
    return value


class _Tracked:
    """Counts a stream generator's cleanup: closed always, cancelled unless it ran to the end."""

    def __init__(self, owner: ShowcaseHandler) -> None:
        self._owner = owner

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        owner = self._owner
        with owner._lock:
            owner._streams_closed += 1
            if exc_type is GeneratorExit or owner.context.cancelled.is_set():
                owner._streams_cancelled += 1


class ShowcaseHandler(ProgramMixin, PythonCallMixin, Handler):
    """The seed's showcase commands: ping, echo, compute, info, random, sleep, session counters, streams."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams_closed = 0
        self._streams_cancelled = 0

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; True when the call was cancelled meanwhile (then stop)."""
        cancelled = self.context.cancelled
        if seconds <= 0:
            return cancelled.is_set()
        return cancelled.wait(seconds)

    def _tracked(self) -> _Tracked:
        return _Tracked(self)

    # -- unary ---------------------------------------------------------------

    @command
    def ping(self, **kwargs: Any) -> dict[str, Any]:
        """Answer {"status": "ok"} with the bridge's pid and time."""
        return {
            "status": "ok",
            "message": "pong",
            "pid": os.getpid(),
            "timestamp": time.time(),
            "session_id": self.context.session_id,
        }

    @command
    def echo(self, **kwargs: Any) -> dict[str, Any]:
        """Answer the arguments as they arrived, under "echoed"."""
        return {"echoed": kwargs}

    @command
    def compute(self, operation: str, a: Any, b: Any = None) -> dict[str, Any]:
        """Arithmetic on a and b: add, subtract, multiply, divide, power, sqrt."""
        if operation not in _OPERATIONS:
            raise InvalidArguments(f"unknown operation {operation!r}; use one of {', '.join(_OPERATIONS)}")
        x = _number("a", a)
        if operation == "sqrt":
            if x < 0:
                raise ValueError(f"cannot take the square root of negative number {x}")
            if isinstance(x, int) and math.isqrt(x) ** 2 == x:
                return {"result": math.isqrt(x), "operation": operation}
            return {"result": math.sqrt(x), "operation": operation}
        if b is None:
            raise InvalidArguments(f"operation {operation!r} needs b")
        y = _number("b", b)
        result: int | float
        if operation == "add":
            result = x + y
        elif operation == "subtract":
            result = x - y
        elif operation == "multiply":
            result = x * y
        elif operation == "divide":
            exact = isinstance(x, int) and isinstance(y, int) and y != 0 and x % y == 0
            # y == 0 raises ZeroDivisionError: the caller gets a CommandError of that type.
            result = x // y if exact else x / y
        else:
            result = x**y
            if isinstance(result, complex):
                raise ValueError(f"{x} ** {y} has no real result")
        return {"result": result, "operation": operation}

    @command
    def info(self) -> dict[str, Any]:
        """The bridge's pid, runtime, uptime and counters."""
        stats = self.stats
        return {
            "pid": os.getpid(),
            "language": "python",
            "runtime_version": platform.python_version(),
            "handler": type(self).__qualname__,
            "uptime": time.monotonic() - stats.started_at,
            "requests_handled": stats.requests,
            "errors": stats.errors,
            "streams_started": stats.streams_started,
            "streams_closed": self._streams_closed,
            "streams_cancelled": self._streams_cancelled,
            "sessions_active": stats.sessions_active,
            "sessions_started": stats.sessions_started,
            "sessions_ended": stats.sessions_ended,
            "session_id": self.context.session_id,
        }

    @command
    def random(
        self, type: str = "uniform", min: float = 0, max: float = 1, mean: float = 0, std: float = 1
    ) -> dict[str, Any]:
        """A random number: uniform (min, max), integer (min, max) or normal (mean, std)."""
        if type == "uniform":
            value: int | float = _random.uniform(_number("min", min), _number("max", max))
        elif type == "integer":
            low, high = _number("min", min), _number("max", max)
            if not (isinstance(low, int) and isinstance(high, int)) or low > high:
                raise InvalidArguments(f"integer needs whole numbers min <= max, not {min!r}, {max!r}")
            value = _random.randint(low, high)
        elif type == "normal":
            value = _random.gauss(_number("mean", mean), _number("std", std))
        else:
            raise InvalidArguments(f"unknown random type {type!r}; use uniform, integer or normal")
        return {"value": value, "type": type}

    @command
    def sleep(self, seconds: float = 0.1) -> dict[str, Any]:
        """Sleep (stops early when the call is cancelled); for timeouts and demos."""
        started = time.monotonic()
        cancelled = self.context.cancelled.wait(_number("seconds", seconds))
        return {"slept": time.monotonic() - started, "cancelled": cancelled}

    # -- session counters ----------------------------------------------------

    def on_session_start(self, session_id: str, state: dict[str, Any], data: Any) -> None:
        state["counter"] = data.get("counter", 0) if isinstance(data, dict) else 0
        state["init_data"] = data
        self.build_programs(state, data)

    @command
    def session_info(self) -> dict[str, Any]:
        """The session's id, the data it was initialised with and its state keys."""
        session = self.context.session
        return {
            "session_id": self.context.session_id,
            "init_data": session.get("init_data"),
            "keys": sorted(session),
        }

    @command
    def set_counter(self, value: int) -> dict[str, Any]:
        """Set the session's counter."""
        self.context.session["counter"] = _number("value", value)
        return {"value": self.context.session["counter"]}

    @command
    def get_counter(self) -> dict[str, Any]:
        """The session's counter (0 when never set)."""
        return {"value": self.context.session.get("counter", 0)}

    @command
    def increment_counter(self, by: int = 1) -> dict[str, Any]:
        """Add ``by`` to the session's counter."""
        session = self.context.session
        session["counter"] = session.get("counter", 0) + _number("by", by)
        return {"value": session["counter"]}

    # -- streams -------------------------------------------------------------

    @command
    def ping_stream(self, count: int = 5, interval: float = 0.01) -> Iterator[dict[str, Any]]:
        """``count`` pings, ``interval`` seconds apart (count <= 0: until cancelled)."""
        with self._tracked():
            seq = 0
            while count <= 0 or seq < count:
                last = count > 0 and seq == count - 1
                yield {"seq": seq, "message": f"ping {seq}", "timestamp": time.time(), "is_final": last}
                seq += 1
                if not last and self._pause(interval):
                    return

    @command
    def batch_inference(
        self,
        batch_items: list[Any] | None = None,
        items: list[Any] | None = None,
        model: str = "resnet50",
        model_path: str | None = None,
        delay: float = 0.0,
    ) -> Iterator[dict[str, Any]]:
        """One prediction chunk per item of batch_items (or items), then a final summary."""
        batch = batch_items if batch_items is not None else (items if items is not None else [])
        if not isinstance(batch, list):
            raise InvalidArguments(f"batch_items must be a list, not {type(batch).__name__}")
        labels = ("cat", "dog", "bird", "car", "tree")
        with self._tracked():
            for index, item in enumerate(batch):
                if self._pause(delay):
                    return
                yield {
                    "item": item,
                    "index": index,
                    "prediction": labels[hash(str(item)) % len(labels)],
                    "confidence": round(_random.uniform(0.7, 0.99), 4),
                    "model": model_path or model,
                    "is_final": False,
                }
            yield {"is_final": True, "total_processed": len(batch), "model": model_path or model}

    @command
    def process_large_dataset(
        self, total_rows: int = 1000, chunk_size: int = 100, delay: float = 0.0, file_path: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Progress chunks over total_rows in steps of chunk_size; the last has final_stats."""
        if chunk_size <= 0 or total_rows < 0:
            raise InvalidArguments("chunk_size must be > 0 and total_rows >= 0")
        started = time.monotonic()
        chunks = max(1, math.ceil(total_rows / chunk_size))
        with self._tracked():
            for index in range(chunks):
                if index and self._pause(delay):
                    return
                processed = min(total_rows, (index + 1) * chunk_size)
                final = index == chunks - 1
                chunk: dict[str, Any] = {
                    "chunk_index": index,
                    "processed_rows": processed,
                    "total_rows": total_rows,
                    "progress_percent": round(100.0 * processed / total_rows, 2) if total_rows else 100.0,
                    "file_path": file_path,
                    "is_final": final,
                }
                if final:
                    chunk["total_processed"] = processed
                    chunk["final_stats"] = {
                        "rows": processed,
                        "chunks": chunks,
                        "duration": time.monotonic() - started,
                    }
                yield chunk

    @command
    def tail_and_analyze(
        self, lines: list[str] | None = None, count: int = 20, interval: float = 0.0, pattern: str = "ERROR"
    ) -> Iterator[dict[str, Any]]:
        """Analyse log lines (given, or ``count`` simulated ones) as they come; then a summary."""
        source = (
            lines
            if lines is not None
            else [
                f"2024-01-01T00:00:{n % 60:02d} {_LOG_LEVELS[n % len(_LOG_LEVELS)]} worker-{n % 4} event {n}"
                for n in range(count)
            ]
        )
        levels: dict[str, int] = {}
        matches = 0
        with self._tracked():
            for number, line in enumerate(source, 1):
                if number > 1 and self._pause(interval):
                    return
                level = next((lvl for lvl in ("ERROR", "WARNING", "DEBUG", "INFO") if lvl in line), "OTHER")
                levels[level] = levels.get(level, 0) + 1
                matched = pattern in line
                matches += matched
                yield {
                    "line_number": number,
                    "line": line,
                    "level": level,
                    "matches": matched,
                    "is_final": False,
                }
            yield {
                "is_final": True,
                "lines": len(source),
                "matches": matches,
                "levels": levels,
                "pattern": pattern,
            }

    @command
    def distributed_training(
        self,
        epochs: int = 5,
        interval: float = 0.0,
        learning_rate: float = 0.01,
        model_config: Any = None,
        dataset_path: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Simulated training: one chunk per epoch (train_loss, val_acc), then final_model_path."""
        loss, acc = 2.5, 0.1
        with self._tracked():
            for epoch in range(1, epochs + 1):
                if epoch > 1 and self._pause(interval):
                    return
                loss *= 0.7 + 0.1 * _random.random()
                acc += (0.99 - acc) * (0.3 + 0.05 * _random.random())
                yield {
                    "epoch": epoch,
                    "total_epochs": epochs,
                    "train_loss": round(loss, 5),
                    "val_loss": round(loss * 1.1, 5),
                    "val_acc": round(acc, 5),
                    "learning_rate": learning_rate,
                    "is_final": False,
                }
            yield {
                "is_final": True,
                "epochs": epochs,
                "final_val_acc": round(acc, 5),
                "final_model_path": f"/tmp/snakepit_models/model_{uuid.uuid4().hex[:12]}.pt",
                "dataset_path": dataset_path,
            }

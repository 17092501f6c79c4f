"""The generic Python call API: call any allowed function or class by its dotted name.

``python.call`` imports ``pkg.mod`` and calls ``pkg.mod.func(*args, **kwargs)``;
with ``store_as`` the returned object stays in the session's state (it need
not be JSON-able) and later calls reach it as ``stored.<name>.<method>``.
``python.retrieve`` answers a stored object's JSON value, ``python.release``
drops it.

Nothing is importable by default: each module must be allowed by the pool's
``allowed_modules`` setting (``--allow-module``), which allows the module and
its submodules. Attribute walks may not step into private names (other than
``__call__``) or into modules that are not allowed, so an allowed module's own
imports do not leak.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

from snakepit_bridge import wire
from snakepit_bridge.handler import Handler, InvalidArguments, command

__all__ = ["OBJECTS_KEY", "PythonCallMixin"]

#: The session state key under which stored objects live.
OBJECTS_KEY = "python.objects"
_STORED = "stored"


def _describe(obj: Any) -> dict[str, Any]:
    kind = type(obj)
    text = repr(obj)
    return {
        "type": f"{kind.__module__}.{kind.__qualname__}",
        "repr": text if len(text) <= 200 else text[:197] + "...",
        "callable": callable(obj),
    }


class PythonCallMixin(Handler):
    """Adds ``python.call``, ``python.retrieve``, ``python.release`` and ``python.stored``."""

    def _allowed(self, module: str) -> bool:
        return any(module == name or module.startswith(name + ".") for name in self.allowed_modules)

    def _refuse(self, module: str) -> InvalidArguments:
        return InvalidArguments(
            f"module {module} is not allowed; add it to the pool's allowed_modules setting"
        )

    def _objects(self) -> dict[str, Any]:
        objects: dict[str, Any] = self.context.session.setdefault(OBJECTS_KEY, {})
        return objects

    def _stored(self, name: str) -> Any:
        objects = self._objects()
        if name not in objects:
            there = ", ".join(sorted(objects)) or "none"
            raise InvalidArguments(f"no stored object {name!r} in this session; stored objects: {there}")
        return objects[name]

    def _walk(self, obj: Any, names: list[str], target: str) -> Any:
        for name in names:
            if not name or (name.startswith("_") and name != "__call__"):
                raise InvalidArguments(
                    f"target {target!r}: attribute {name!r} is private and cannot be called"
                )
            try:
                obj = getattr(obj, name)
            except AttributeError:
                raise InvalidArguments(
                    f"target {target!r}: {type(obj).__name__} object has no attribute {name!r}"
                ) from None
            if isinstance(obj, types.ModuleType) and not self._allowed(obj.__name__):
                raise self._refuse(obj.__name__)
        return obj

    def _resolve(self, target: str) -> Any:
        parts = target.split(".")
        if parts[0] == _STORED:
            if len(parts) < 2:
                raise InvalidArguments(
                    "a stored target looks like 'stored.<name>' or 'stored.<name>.<method>'"
                )
            return self._walk(self._stored(parts[1]), parts[2:], target)
        if len(parts) < 2 or not all(parts):
            raise InvalidArguments(f"target {target!r} must look like 'package.module.function'")
        for end in range(len(parts) - 1, 0, -1):
            module_name = ".".join(parts[:end])
            if not self._allowed(module_name):
                continue
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                    continue  # not a module: a longer prefix was an attribute path
                raise
            return self._walk(module, parts[end:], target)
        raise self._refuse(".".join(parts[:-1]))

    @command(
        name="python.call", doc="Call an allowed module's function or class (or a stored object's method)."
    )
    def python_call(
        self,
        target: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        store_as: str | None = None,
    ) -> Any:
        if not isinstance(target, str):
            raise InvalidArguments(f"target must be a string, not {type(target).__name__}")
        if args is not None and not isinstance(args, list):
            raise InvalidArguments(f"args must be a list, not {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise InvalidArguments(f"kwargs must be an object, not {type(kwargs).__name__}")
        func = self._resolve(target)
        if not callable(func):
            raise InvalidArguments(f"target {target!r} is a {type(func).__name__}, which cannot be called")
        result = func(*(args or ()), **(kwargs or {}))
        if store_as is not None:
            if not isinstance(store_as, str) or not store_as or "." in store_as:
                raise InvalidArguments(f"store_as must be a name without dots, not {store_as!r}")
            self._objects()[store_as] = result
            return {"stored_as": store_as, **_describe(result)}
        try:
            wire.encode(result)
        except wire.WireError:
            raise TypeError(
                f"{target} returned a {type(result).__name__}, which cannot be sent as JSON; "
                "pass store_as to keep it in the session and call its methods"
            ) from None
        return result

    @command(name="python.retrieve", doc="The JSON value of a stored object.")
    def python_retrieve(self, name: str) -> Any:
        obj = self._stored(name)
        try:
            wire.encode(obj)
        except wire.WireError:
            raise TypeError(
                f"stored object {name!r} is a {type(obj).__name__}, which cannot be sent as JSON"
            ) from None
        return obj

    @command(name="python.release", doc="Drop a stored object.")
    def python_release(self, name: str) -> dict[str, Any]:
        objects = self._objects()
        released = name in objects
        objects.pop(name, None)
        return {"released": released, "name": name}

    @command(name="python.stored", doc="The objects stored in this session.")
    def python_stored(self) -> dict[str, Any]:
        return {name: _describe(obj) for name, obj in sorted(self._objects().items())}

"""Load the handler class named on the command line (``module:Class``)."""

from __future__ import annotations

import importlib
import inspect

from snakepit_bridge.handler import Handler

__all__ = ["DEFAULT_HANDLER", "AdapterError", "load_handler"]

#: The handler a bridge serves when none is named.
DEFAULT_HANDLER = "snakepit_bridge.showcase:ShowcaseHandler"


class AdapterError(ValueError):
    """The named handler cannot be loaded; the message says why."""


def load_handler(spec: str) -> type[Handler]:
    """Import ``module:Class`` (``module.Class`` is accepted too) and check it is a Handler.

    Raises:
        AdapterError: malformed spec, module not importable, no such class, or
            the class is not a :class:`Handler` subclass.
    """
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
    else:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise AdapterError(f"--adapter {spec!r} must look like 'package.module:HandlerClass'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AdapterError(f"--adapter {spec!r}: cannot import module {module_name!r}: {exc}") from None
    except Exception as exc:
        raise AdapterError(
            f"--adapter {spec!r}: importing module {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from None
    target = getattr(module, attr, None)
    if target is None:
        found = sorted(
            name
            for name, value in vars(module).items()
            if inspect.isclass(value) and issubclass(value, Handler) and value is not Handler
        )
        hint = f"; handlers there: {', '.join(found)}" if found else ""
        raise AdapterError(f"--adapter {spec!r}: module {module_name!r} has no attribute {attr!r}{hint}")
    if not (inspect.isclass(target) and issubclass(target, Handler)):
        raise AdapterError(
            f"--adapter {spec!r}: {attr!r} is a {type(target).__name__}, not a subclass of "
            "snakepit_bridge.Handler"
        )
    return target

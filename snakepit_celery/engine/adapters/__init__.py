"""Adapters: one per bridge language, chosen by alias or ``module:Class``.

``ADAPTERS`` maps an alias to the ``module:Class`` of its adapter, imported
only when a pool uses it. Another language registers itself by adding one
line here.
"""

from __future__ import annotations

import difflib
import importlib

from snakepit_celery.engine.adapters.base import Adapter, LaunchSpec
from snakepit_celery.errors import ConfigurationError

__all__ = ["ADAPTERS", "Adapter", "LaunchSpec", "resolve_adapter"]

#: Alias -> ``module:Class`` of the adapter.
ADAPTERS: dict[str, str] = {
    "python": "snakepit_celery.engine.adapters.python:PythonAdapter",
    "node": "snakepit_celery.engine.adapters.node:NodeAdapter",
    "ruby": "snakepit_celery.engine.adapters.ruby:RubyAdapter",
}


def resolve_adapter(name: str) -> Adapter:
    """An adapter instance for ``name``: an alias of :data:`ADAPTERS` or ``module:Class``.

    Raises:
        ConfigurationError: unknown alias (with "did you mean"), a module or
            class that cannot be imported, or a class that is no Adapter.
    """
    target = ADAPTERS.get(name)
    if target is None:
        if ":" not in name:
            close = difflib.get_close_matches(name, ADAPTERS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(
                f"adapter: unknown adapter {name!r}{hint} Known: {', '.join(sorted(ADAPTERS))}, "
                "or 'module:Class'"
            )
        target = name
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"adapter: cannot import module {module_name!r}: {exc}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigurationError(f"adapter: module {module_name!r} has no attribute {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise ConfigurationError(f"adapter: {target!r} is not a subclass of snakepit_celery.adapters.Adapter")
    return cls()

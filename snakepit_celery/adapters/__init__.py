"""The documented path of the adapters (``from snakepit_celery.adapters import Adapter``).

They live in :mod:`snakepit_celery.engine.adapters`; this module re-exports the
same objects, so a subclass of either ``Adapter`` is a subclass of the other.
The package's own code imports the new path (a contract in ``pyproject.toml``).
"""

from snakepit_celery.engine.adapters import ADAPTERS, Adapter, LaunchSpec, resolve_adapter

__all__ = ["ADAPTERS", "Adapter", "LaunchSpec", "resolve_adapter"]

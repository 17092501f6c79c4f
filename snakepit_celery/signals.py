"""The documented path of the pool signals (``from snakepit_celery.signals import ...``).

They live in :mod:`snakepit_celery.observability.signals`; this module re-exports
the same objects, so a receiver connected through either path gets the same sends.
The package's own code imports the new path (a contract in ``pyproject.toml``).
"""

from snakepit_celery.observability.signals import (
    SignalTelemetry,
    bridge_exited,
    bridge_initialized,
    request_finished,
    request_logger,
)

__all__ = ["SignalTelemetry", "bridge_exited", "bridge_initialized", "request_finished", "request_logger"]

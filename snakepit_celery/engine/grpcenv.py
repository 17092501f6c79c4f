"""gRPC core settings for the two processes on each end of a bridge's socket.

Why: since grpcio 1.6x the core runs client and server connections on its
EventEngine, which reads every socket on a poller thread and hands each read
to a thread pool. Between two processes on one Unix socket that costs an
extra thread wake-up on each side of every call. With the experiments
``event_engine_client`` and ``event_engine_listener`` turned off, the core
reads on the thread that waits for the call instead (the older "iomgr"
path, still shipped and supported). Measured on grpcio 1.85 (2 cores, a
``ping`` on a Unix socket): a quarter less CPU per call on both sides and
about 0.3 ms less for a call from a Celery task (``benchmarks/celery_overhead.py``).

gRPC reads ``GRPC_EXPERIMENTS`` once per process, while ``import grpc`` runs.
The worker therefore imports gRPC with the variable set, as its snakepit step
is built (before the pools would import it), and then restores its
environment: the processes it starts later (a task's own subprocesses, Node.js
and Ruby bridges, whose gRPC builds do not know these names) inherit nothing.
Each Python bridge gets the variable in its launch environment. A
``GRPC_EXPERIMENTS`` the user set, even to the empty string (gRPC's own
defaults), is never changed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

__all__ = ["GRPC_EXPERIMENTS", "VARIABLE", "for_python_bridge", "tune_this_process"]

#: The environment variable gRPC's core reads its experiments from.
VARIABLE = "GRPC_EXPERIMENTS"
#: The experiments turned off by default (see the module's docstring).
GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener"


def tune_this_process() -> bool:
    """Load gRPC in this process with the default experiments; ``os.environ`` is left as it was.

    Returns:
        True when gRPC was loaded with them. False when the user set the
        variable, or when gRPC was already imported (too late for this process).
    """
    if VARIABLE in os.environ or "grpc" in sys.modules:
        return False
    os.environ[VARIABLE] = GRPC_EXPERIMENTS
    try:
        import grpc  # noqa: F401  (the core reads its experiments here, once)
    finally:
        del os.environ[VARIABLE]
    return True


def for_python_bridge(env: MutableMapping[str, str]) -> None:
    """Give a Python bridge's launch environment the default, unless it has a value."""
    env.setdefault(VARIABLE, GRPC_EXPERIMENTS)

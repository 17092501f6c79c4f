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

gRPC reads ``GRPC_EXPERIMENTS`` once, when its core starts, so the value must
be in the environment before the first ``import grpc`` of a process: the
worker sets it as its snakepit step is built (gRPC is imported only when the
pools start), and every Python bridge gets it in its launch environment.
A ``GRPC_EXPERIMENTS`` the user set, even to the empty string (gRPC's own
defaults), is never changed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

__all__ = ["GRPC_EXPERIMENTS", "VARIABLE", "for_other_bridge", "for_python_bridge", "tune_this_process"]

#: The environment variable gRPC's core reads its experiments from.
VARIABLE = "GRPC_EXPERIMENTS"
#: The experiments turned off by default (see the module's docstring).
GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener"

#: True once :func:`tune_this_process` put the default into ``os.environ``.
_set_here = False


def tune_this_process() -> bool:
    """Put the default ``GRPC_EXPERIMENTS`` into this process's environment.

    Returns:
        True when it now applies: the variable was unset and gRPC not yet
        imported. False when the user set the variable, or when gRPC was
        already imported (too late to change it for this process).
    """
    global _set_here
    if _set_here:
        return True
    if VARIABLE in os.environ or "grpc" in sys.modules:
        return False
    os.environ[VARIABLE] = GRPC_EXPERIMENTS
    _set_here = True
    return True


def for_python_bridge(env: MutableMapping[str, str]) -> None:
    """Give a Python bridge's launch environment the default, unless it has a value."""
    env.setdefault(VARIABLE, GRPC_EXPERIMENTS)


def for_other_bridge(env: MutableMapping[str, str]) -> None:
    """Keep this process's default out of a non-Python bridge's environment.

    Their gRPC builds do not know these experiment names (Debian's ruby-grpc
    1.51 logs an error for each at start), so only a value the user set
    themselves is passed on.
    """
    if _set_here and env.get(VARIABLE) == GRPC_EXPERIMENTS:
        del env[VARIABLE]

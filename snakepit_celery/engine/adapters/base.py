"""What an adapter is: the knowledge of how to launch one bridge of a language.

The pool knows nothing about interpreters or scripts. It asks the adapter for
a :class:`LaunchSpec` (argv, environment, working directory) and runs it.
Every bridge CLI takes the same four options, so the common part lives here:
``--socket PATH --parent-pid PID --run-id RUN_ID --max-message-bytes N``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from snakepit_celery.config import PoolConfig

__all__ = ["MESSAGE_OVERHEAD", "Adapter", "LaunchSpec", "max_message_bytes"]

#: Room for the protobuf envelope around a payload of ``max_payload_bytes``.
MESSAGE_OVERHEAD = 64 * 1024


def max_message_bytes(pool: PoolConfig) -> int:
    """The gRPC message limit of the pool's channels: payload limit + envelope.

    Bridges get the payload limit itself (``--max-message-bytes``) and add the
    same envelope to their server's limits.
    """
    return pool.max_payload_bytes + MESSAGE_OVERHEAD


@dataclass(frozen=True)
class LaunchSpec:
    """How to run one bridge process."""

    #: The full command line; ``argv[0]`` is the executable.
    argv: list[str]
    #: The complete environment of the process (not a delta).
    env: dict[str, str] = field(default_factory=dict)
    #: Working directory, or None for the worker's own.
    cwd: str | None = None


class Adapter:
    """Base of every adapter; subclass and fill in :meth:`command`.

    Subclasses are found by alias in ``snakepit_celery.engine.adapters.ADAPTERS`` or
    by ``module:Class`` in ``PoolConfig.adapter``.
    """

    #: The bridge's language, as its ``Describe`` reports it.
    language: ClassVar[str] = "unknown"
    #: True when the adapter can fork bridges from a zygote (``preload``).
    supports_preload: ClassVar[bool] = False

    def command(self, pool: PoolConfig) -> list[str]:
        """The executable and its language-specific arguments (before the common ones)."""
        raise NotImplementedError(f"{type(self).__name__} must implement command()")

    def common_args(self, pool: PoolConfig, *, socket_path: str, run_id: str, parent_pid: int) -> list[str]:
        """The options every bridge CLI takes."""
        return [
            "--socket",
            socket_path,
            "--parent-pid",
            str(parent_pid),
            "--run-id",
            run_id,
            "--max-message-bytes",
            str(pool.max_payload_bytes),
        ]

    def environment(self, pool: PoolConfig) -> dict[str, str]:
        """The worker's environment with the pool's ``env`` on top."""
        env = dict(os.environ)
        env.update(pool.env)
        return env

    def launch(self, pool: PoolConfig, *, socket_path: str, run_id: str, parent_pid: int) -> LaunchSpec:
        """The full launch of one bridge serving on ``socket_path``."""
        argv = [
            *self.command(pool),
            *self.common_args(pool, socket_path=socket_path, run_id=run_id, parent_pid=parent_pid),
            *pool.args,
        ]
        return LaunchSpec(argv=argv, env=self.environment(pool), cwd=pool.cwd)

    def preload(self, pool: PoolConfig, *, run_id: str, parent_pid: int) -> LaunchSpec:
        """The launch of a zygote that forks bridges on request (``preload`` only)."""
        raise NotImplementedError(f"the {self.language} adapter has no preload start method")

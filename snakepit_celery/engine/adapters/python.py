"""The Python bridge: ``python -m snakepit_bridge`` from any interpreter.

``PoolConfig.executable`` may name another virtualenv's python, as long as
the ``snakepit-bridge`` package is installed there. Python is the one
language with the ``preload`` start method: a zygote
(``python -m snakepit_bridge.zygote``) imports gRPC and the handler once and
forks a bridge per request.
"""

from __future__ import annotations

import sys
from typing import ClassVar

from snakepit_celery.config import PoolConfig
from snakepit_celery.engine import grpcenv
from snakepit_celery.engine.adapters.base import Adapter, LaunchSpec

__all__ = ["PythonAdapter"]


class PythonAdapter(Adapter):
    """Launches the Python bridge, or its zygote for ``preload`` pools."""

    language: ClassVar[str] = "python"
    supports_preload: ClassVar[bool] = True

    def _python_args(self, pool: PoolConfig) -> list[str]:
        args: list[str] = []
        if pool.handler:
            args += ["--adapter", pool.handler]
        for module in pool.allowed_modules:
            args += ["--allow-module", module]
        return args

    def environment(self, pool: PoolConfig) -> dict[str, str]:
        """The worker's environment and the pool's ``env``, plus the gRPC tuning of
        :mod:`snakepit_celery.engine.grpcenv` unless either sets ``GRPC_EXPERIMENTS``."""
        env = super().environment(pool)
        grpcenv.for_python_bridge(env)
        return env

    def command(self, pool: PoolConfig) -> list[str]:
        return [pool.executable or sys.executable, "-m", "snakepit_bridge", *self._python_args(pool)]

    def preload(self, pool: PoolConfig, *, run_id: str, parent_pid: int) -> LaunchSpec:
        argv = [
            pool.executable or sys.executable,
            "-m",
            "snakepit_bridge.zygote",
            *self._python_args(pool),
            "--parent-pid",
            str(parent_pid),
            "--run-id",
            run_id,
            "--max-message-bytes",
            str(pool.max_payload_bytes),
            *pool.args,
        ]
        return LaunchSpec(argv=argv, env=self.environment(pool), cwd=pool.cwd)

"""The Node.js bridge: ``node bridges/node/bin/snakepit-bridge.js`` from this checkout.

``PoolConfig.handler`` is a handler file (``--adapter path/to/handler.js``);
without one the bridge serves its showcase handler. ``PoolConfig.executable``
may name another ``node`` (Node.js 20 or later). The bridge's npm dependencies
must be installed (``make node-bridge`` runs ``npm ci`` there).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

from snakepit_celery.config import PoolConfig
from snakepit_celery.engine.adapters.base import Adapter
from snakepit_celery.errors import ConfigurationError

__all__ = ["NODE_BRIDGE_DIR", "NodeAdapter"]

#: The Node.js bridge package in this source tree.
NODE_BRIDGE_DIR = Path(__file__).resolve().parents[3] / "bridges" / "node"


class NodeAdapter(Adapter):
    """Launches the Node.js bridge (on @grpc/grpc-js)."""

    language: ClassVar[str] = "node"

    def command(self, pool: PoolConfig) -> list[str]:
        executable = pool.executable or shutil.which("node")
        if executable is None:
            raise ConfigurationError(
                f"pools.{pool.name}.executable: no 'node' on PATH; install Node.js 20 or set executable"
            )
        script = NODE_BRIDGE_DIR / "bin" / "snakepit-bridge.js"
        if not script.is_file():
            raise ConfigurationError(f"pools.{pool.name}.adapter: the Node.js bridge is missing ({script})")
        if not (NODE_BRIDGE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
            raise ConfigurationError(
                f"pools.{pool.name}.adapter: the Node.js bridge's packages are not installed; "
                f"run `make node-bridge` (npm ci in {NODE_BRIDGE_DIR})"
            )
        argv = [executable, str(script)]
        if pool.handler:
            argv += ["--adapter", str(Path(pool.handler).expanduser().resolve())]
        return argv

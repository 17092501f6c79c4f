"""The Ruby bridge: ``ruby bridges/ruby/bin/snakepit-bridge-ruby`` from this checkout.

It runs on Debian's ``ruby-grpc`` and ``ruby-google-protobuf`` packages
(``make ruby-bridge`` installs them with apt-get when missing).
``PoolConfig.handler`` is a handler file (``--adapter path/to/handler.rb``);
without one the bridge serves its showcase handler. ``PoolConfig.executable``
may name another ``ruby``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

from snakepit_celery.config import PoolConfig
from snakepit_celery.engine.adapters.base import Adapter
from snakepit_celery.errors import ConfigurationError

__all__ = ["RUBY_BRIDGE_DIR", "RubyAdapter"]

#: The Ruby bridge in this source tree.
RUBY_BRIDGE_DIR = Path(__file__).resolve().parents[3] / "bridges" / "ruby"


class RubyAdapter(Adapter):
    """Launches the Ruby bridge (on Debian's ruby-grpc)."""

    language: ClassVar[str] = "ruby"

    def command(self, pool: PoolConfig) -> list[str]:
        executable = pool.executable or shutil.which("ruby")
        if executable is None:
            raise ConfigurationError(
                f"pools.{pool.name}.executable: no 'ruby' on PATH; run `make ruby-bridge` or set executable"
            )
        script = RUBY_BRIDGE_DIR / "bin" / "snakepit-bridge-ruby"
        if not script.is_file():
            raise ConfigurationError(f"pools.{pool.name}.adapter: the Ruby bridge is missing ({script})")
        argv = [executable, str(script)]
        if pool.handler:
            argv += ["--adapter", str(Path(pool.handler).expanduser().resolve())]
        return argv

"""snakepit-bridge: the Python side of snakepit-celery's Bridge protocol.

Write a handler, run it as a bridge::

    from snakepit_bridge import Handler, command

    class MyHandler(Handler):
        @command
        def add(self, a: int, b: int) -> dict:
            return {"sum": a + b}

    # snakepit-bridge --socket /tmp/b.sock --adapter mymodule:MyHandler

Importing this package creates no gRPC object (a preload zygote imports it
before forking); the server lives in :mod:`snakepit_bridge.server`.
"""

from snakepit_bridge.handler import (
    BridgeStats,
    CallContext,
    Handler,
    InvalidArguments,
    NoCallContext,
    command,
)

__all__ = [
    "BridgeStats",
    "CallContext",
    "Handler",
    "InvalidArguments",
    "NoCallContext",
    "command",
]

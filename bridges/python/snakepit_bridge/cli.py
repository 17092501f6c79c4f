"""``snakepit-bridge`` / ``python -m snakepit_bridge``: run one bridge process.

The pool launches it as::

    snakepit-bridge --socket /run/dir/b1.sock --parent-pid 1234 --run-id r1 \\
        --max-message-bytes 67108864 --adapter myapp.handlers:MyHandler \\
        --allow-module numpy --allow-module json

Exit codes: 0 after a clean stop, 2 for bad arguments or a handler that
cannot be loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from snakepit_bridge import tracing
from snakepit_bridge.commands import HandlerDefinitionError
from snakepit_bridge.loader import DEFAULT_HANDLER, AdapterError, load_handler

__all__ = ["build_parser", "main", "run"]

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snakepit-bridge", description="Serve a snakepit handler over gRPC."
    )
    parser.add_argument("--socket", required=True, metavar="PATH", help="Unix socket file to listen on")
    parser.add_argument(
        "--adapter",
        "--handler",
        dest="adapter",
        default=DEFAULT_HANDLER,
        metavar="MODULE:CLASS",
        help=f"handler class to serve (default {DEFAULT_HANDLER})",
    )
    parser.add_argument("--parent-pid", type=int, default=None, metavar="PID", help="stop when PID exits")
    parser.add_argument("--run-id", default=None, help="the pool's run id (for logs)")
    parser.add_argument(
        "--max-message-bytes", type=int, default=None, metavar="N", help="largest arguments/result in bytes"
    )
    parser.add_argument(
        "--allow-module",
        action="append",
        default=[],
        metavar="NAME",
        help="module the generic Python call API may import (repeatable; with its submodules)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
    )
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, load the handler and serve it; return the exit code.

    A preload zygote calls this in the forked child (after having imported the
    handler module), then exits with the code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format=f"%(asctime)s snakepit-bridge[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    if args.max_message_bytes is not None and args.max_message_bytes <= 0:
        parser.error(f"--max-message-bytes must be > 0, not {args.max_message_bytes}")
    try:
        handler = load_handler(args.adapter)()
    except AdapterError as exc:
        print(f"snakepit-bridge: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        print(
            f"snakepit-bridge: error: --adapter {args.adapter!r}: creating the handler raised "
            f"{type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return EXIT_USAGE

    # Imported here: the server pulls in gRPC, which a bad --adapter need not pay for.
    from snakepit_bridge.server import DEFAULT_MAX_MESSAGE_BYTES, serve

    try:
        return serve(
            handler,
            args.socket,
            parent_pid=args.parent_pid,
            run_id=args.run_id,
            max_message_bytes=args.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES,
            allowed_modules=args.allow_module,
        )
    except HandlerDefinitionError as exc:
        print(f"snakepit-bridge: error: --adapter {args.adapter!r}: {exc}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console entry point: :func:`run`, then exit at once.

    ``os._exit`` rather than ``sys.exit``: a command stuck in user code must
    not hold the process after a stop (the thread pool's atexit join would
    wait for it), and a zygote child must not run the zygote's atexit hooks.
    """
    try:
        code = run(argv)
    except SystemExit as exc:  # argparse errors and --help
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    except BaseException:
        logging.getLogger(__name__).exception("the bridge failed")
        code = 1
    tracing.flush()  # os._exit skips the SDK's own flush at exit
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)

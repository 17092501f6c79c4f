"""The ``snakepit-celery`` command: ``worker``, ``demo`` and ``status``.

::

    snakepit-celery worker [--config FILE] [--broker URL] [celery worker options...]
    snakepit-celery demo
    snakepit-celery status [--config FILE] [--broker URL] [--json] [--timeout S]
    snakepit-celery status --watch [--interval S] [--timeout S]

A bad config is refused before anything starts, with the field named and
exit status 2. ``status`` also lists the config's pools that no live worker
hosts (a table row saying ``no live worker``, and ``"no_live_worker"`` in
``--json``): calls to them wait in their queue until a worker hosting them starts.
``status --watch`` redraws the table in place (rich's ``Live``) every
``--interval`` seconds after the replies' ``--timeout``, until Ctrl-C (exit 0);
off a terminal it prints each new table below the last one instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url

from snakepit_celery.cli_status import format_status, status_of
from snakepit_celery.config import SnakepitConfig
from snakepit_celery.errors import ConfigurationError

__all__ = ["main"]

#: Exit status of a refused configuration (as argparse uses for bad usage).
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snakepit-celery", description="Celery workers that host warm bridge processes."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE", help="a TOML worker config (default: $SNAKEPIT_CONFIG)")
        p.add_argument("--broker", metavar="URL", help="the broker (default: $SNAKEPIT_BROKER_URL)")

    worker = sub.add_parser(
        "worker",
        help="start a Celery worker hosting the config's pools",
        description="Other options are passed to `celery worker` (e.g. --loglevel INFO -n name@%%h).",
    )
    common(worker)
    sub.add_parser("demo", help="run the showcase against an embedded Redis and a real worker")
    status = sub.add_parser("status", help="live pool stats of every worker")
    common(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--timeout", type=_seconds, default=1.0, help="seconds to wait for replies")
    status.add_argument("--watch", action="store_true", help="redraw a live table until Ctrl-C")
    status.add_argument(
        "--interval", type=_seconds, default=2.0, help="with --watch: seconds between two tables (2)"
    )
    return parser


def _seconds(raw: str) -> float:
    """A positive number of seconds (argparse reports the error with the option's name)."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be > 0 seconds")
    return value


def _load_config(ns: argparse.Namespace) -> SnakepitConfig:
    """``--config`` (else ``$SNAKEPIT_CONFIG``), the ``SNAKEPIT_*`` variables on top, then ``--broker``."""
    env = dict(os.environ)
    if ns.config:
        env["SNAKEPIT_CONFIG"] = ns.config
    config = SnakepitConfig.from_env(env)
    if ns.broker:
        config = dataclasses.replace(config, broker_url=ns.broker)
    return config


def cmd_worker(ns: argparse.Namespace, celery_args: list[str]) -> int:
    """Run a worker in this process until it is stopped; its exit status."""
    from snakepit_celery.api import create_app

    app = create_app(_load_config(ns))
    app.worker_main(["worker", *celery_args])
    return 0


def cmd_status(ns: argparse.Namespace) -> int:
    """Print every worker's pools; 1 when no worker answered."""
    from snakepit_celery.api import create_app

    config = _load_config(ns)
    app = create_app(config)
    if ns.watch and ns.json:
        print("snakepit-celery: status --watch draws a table; --json prints once", file=sys.stderr)
        return EXIT_CONFIG
    if ns.watch:
        from snakepit_celery.cli_watch import watch_status

        try:
            return watch_status(app, config, interval=ns.interval, timeout=ns.timeout)
        finally:
            app.close()
    broker = maybe_sanitize_url(app.conf.broker_url)  # the password masked
    try:
        stats = status_of(app, config, timeout=ns.timeout)
    except (OperationalError, OSError) as exc:
        print(f"snakepit-celery: cannot reach the broker at {broker}: {exc}", file=sys.stderr)
        return 1
    finally:
        app.close()
    if ns.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    else:
        print(format_status(stats))
    if not stats["nodes"]:
        print(f"no snakepit worker answered within {ns.timeout}s on {broker}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``snakepit-celery`` script."""
    parser = _parser()
    ns, rest = parser.parse_known_args(argv)
    if rest and ns.command != "worker":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if ns.command == "worker":
            return cmd_worker(ns, rest)
        if ns.command == "status":
            return cmd_status(ns)
        from snakepit_celery.demo import run_demo

        return run_demo()
    except ConfigurationError as exc:
        print(f"snakepit-celery: configuration refused: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())

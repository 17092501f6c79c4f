"""``snakepit-celery status --watch``: the status table redrawn in place until Ctrl-C.

Each round asks every worker for its pool stats (waiting ``timeout`` seconds
for the replies, as ``status`` does), draws the table with rich's ``Live``,
then waits ``interval`` seconds. A round that fails (the broker is down, say)
keeps the last table and says why under it, so a watch outlives a broker
restart. Ctrl-C or SIGINT ends it with exit status 0.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from kombu.utils.url import maybe_sanitize_url
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from snakepit_celery.cli_status import format_status, status_of, status_rows
from snakepit_celery.config import SnakepitConfig

__all__ = ["status_table", "watch_status"]


def status_table(stats: dict[str, Any], *, title: str = "snakepit pools") -> Table:
    """The rich table of :func:`~snakepit_celery.cli_status.status_rows`: the totals row last, in bold."""
    header, *rows = status_rows(stats)
    table = Table(title=title, title_justify="left", header_style="bold", box=None)
    for index, name in enumerate(header):
        # A narrow terminal shrinks the counters, never the worker's or the pool's name.
        keep = max(len(row[index]) for row in (header, *rows)) if index < 2 else None
        table.add_column(name, min_width=keep, no_wrap=True)
    for index, row in enumerate(rows):
        last = index == len(rows) - 1
        table.add_row(*row, style="bold" if last else ("dim" if row[0] == "(no live worker)" else None))
    return table


def watch_status(
    app: Any,
    config: SnakepitConfig,
    *,
    interval: float = 2.0,
    timeout: float = 1.0,
    console: Console | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Redraw every worker's pools until Ctrl-C (or ``stop`` is set); the exit status, 0.

    Args:
        app: the Celery app whose workers are asked (``snakepit_stats``).
        config: its snakepit config (its pools that no worker hosts get a row).
        interval: seconds between the end of one round and the start of the next.
        timeout: seconds each round waits for the workers' replies.
        console: where to draw; None: stdout. Off a terminal, the plain table
            of ``status`` is written below the last one (a pipe cannot be redrawn).
        stop: set from another thread to end the watch (tests, embedding).

    Returns:
        0: the watch ends only when asked to.
    """
    console = console or Console()
    stop = stop or threading.Event()
    broker = maybe_sanitize_url(app.conf.broker_url)  # the password masked
    last: dict[str, Any] = {"nodes": {}, "no_live_worker": [p.name for p in config.pools]}
    live = Live(console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False)
    try:
        with live:
            while not stop.is_set():
                note = ""
                try:
                    last = status_of(app, config, timeout=timeout)
                    if not last["nodes"]:
                        note = f"no snakepit worker answered within {timeout}s on {broker}"
                except Exception as exc:  # shown, and the next round tries again
                    note = f"could not ask the workers: {type(exc).__name__}: {exc}"
                stamp = time.strftime("%H:%M:%S")
                title = f"snakepit pools at {stamp} (every {interval:g}s; Ctrl-C to stop)"
                if console.is_terminal:
                    view: Any = status_table(last, title=title)
                    live.update(Group(view, Text(note, style="yellow")) if note else view, refresh=True)
                else:  # a pipe or a file: the plain table of `status`, one after the other
                    lines = [title, format_status(last), *([note] if note else []), ""]
                    console.file.write("\n".join(lines) + "\n")
                    console.file.flush()
                stop.wait(interval)
    except KeyboardInterrupt:
        pass
    return 0

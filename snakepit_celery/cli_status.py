"""The status table of ``snakepit-celery status``: the pools of every live worker, then the totals.

Its rows are shared by the printed table (:func:`format_status`) and the live
one of ``status --watch`` (:mod:`snakepit_celery.cli_watch`).
"""

from __future__ import annotations

from typing import Any

from snakepit_celery.config import SnakepitConfig

__all__ = ["format_status", "status_of", "status_rows"]


#: Columns of the status table: header, key of a pool's stats.
_COLUMNS = (
    ("POOL", "name"),
    ("LANG", "language"),
    ("SIZE", "size"),
    ("ALIVE", "workers"),
    ("BUSY", "busy"),
    ("FREE", "available"),
    ("QUEUED", "queued"),
    ("REQUESTS", "requests"),
    ("ERRORS", "errors"),
    ("TIMEOUTS", "queue_timeouts"),
    ("SATURATED", "pool_saturated"),
    ("RESTARTS", "restarts"),
    ("SESSIONS", "sessions"),
    ("MEM_MB", "rss_mb"),
    ("PIDS", "bridge_pids"),
)


def status_of(app: Any, config: SnakepitConfig, *, timeout: float = 1.0) -> dict[str, Any]:
    """:func:`~snakepit_celery.observability.stats.get_stats` of ``app``, plus ``"no_live_worker"``: the
    pools of ``config`` that no worker answering within ``timeout`` hosts, in config order."""
    from snakepit_celery.observability.stats import get_stats

    stats = get_stats(app, timeout=timeout)
    hosted = {name for node in stats["nodes"].values() for name in node.get("pools", {})}
    stats["no_live_worker"] = [p.name for p in config.pools if p.name not in hosted]
    return stats


def _cell(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def format_status(stats: dict[str, Any]) -> str:
    """The table ``status`` prints: one row per pool of each worker, a row per configured
    pool that no live worker hosts (``no live worker``), then the totals."""
    rows = status_rows(stats)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def status_rows(stats: dict[str, Any]) -> list[list[str]]:
    """The cells of the status table: the header, a row per pool of each worker, a row per
    configured pool no live worker hosts, and the totals last (the text and live tables')."""
    rows: list[list[str]] = [["WORKER", *(h for h, _ in _COLUMNS)]]
    for hostname, node in stats["nodes"].items():
        for pool in node.get("pools", {}).values():
            rows.append([hostname, *(_cell(pool.get(key, "")) for _, key in _COLUMNS)])
    for name in stats.get("no_live_worker", ()):
        rows.append(["(no live worker)", name, *("" for _ in _COLUMNS[1:])])
    total = {h: _cell(stats[k]) for h, k in _COLUMNS if k in stats}
    rows.append([f"total ({len(stats['nodes'])} workers)", *(total.get(h, "") for h, _ in _COLUMNS)])
    return rows

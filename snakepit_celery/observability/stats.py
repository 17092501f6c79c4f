"""``get_stats()``: the seed's pool counters, summed over every live worker, with the detail.

Each worker answers the ``snakepit_stats`` remote-control command with its
``PoolHost.stats()``; this module asks them all over the broker (the same
mailbox ``celery inspect`` uses) and adds the answers up. Only workers that
answer within ``timeout`` are counted: a dead worker has no bridges.

The shape::

    {
        # the seed's fields, summed over workers and pools
        "workers": 8,            # bridge processes alive
        "available": 6, "busy": 2, "queued": 0,
        "requests": 1534,        # calls finished
        "errors": 12,            # calls that failed, whatever the reason (see failed_calls)
        "queue_timeouts": 3, "pool_saturated": 0,
        # more sums
        "restarts": 1, "sessions": 4, "rss_bytes": 412000000, "rss_mb": 392.9,
        # per Celery worker, with each of its pools
        "nodes": {"celery@web1": {..same sums.., "run_id": "..", "bridge_pids": [..],
                                  "pools": {"python": {..pool stats.., "bridge_pids": [..],
                                                       "sessions": 4, "rss_bytes": ..,
                                                       "bridges": [{"pid", "state", ...}]}}}},
        # per pool name, summed over the workers that host it
        "pools": {"python": {..sums.., "nodes": ["celery@web1"]}},
    }
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from celery import Celery

from snakepit_celery.appconfig import app_or_current

__all__ = ["DEFAULT_STATS_TIMEOUT", "EXTRA", "SUMMED", "failed_calls", "get_stats", "summarize"]

#: Seconds to wait for the workers' answers.
DEFAULT_STATS_TIMEOUT = 1.0
#: The seed's counters (``Snakepit.get_stats()``), summed over workers.
SUMMED = ("workers", "available", "busy", "requests", "queued", "errors", "queue_timeouts", "pool_saturated")
#: Further sums: bridge replacements, pinned sessions, resident memory of the bridges.
EXTRA = ("restarts", "sessions", "rss_bytes")
#: The remote-control command every snakepit worker answers (``celery inspect snakepit_stats``).
STATS_COMMAND = "snakepit_stats"


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def failed_calls(stats: Mapping[str, Any]) -> int:
    """Every failed call of a pool: those that failed on a bridge plus those the queue refused.

    The pool counts a call that reached a bridge and failed (command error,
    unknown command, hard timeout, crash) in ``errors``, and a call refused
    before it reached one in ``queue_timeouts`` or ``pool_saturated`` only;
    callers see all of them fail, so ``get_stats()["errors"]`` adds them up.
    The pool's own figure stays in ``bridge_errors``.
    """
    return _int(stats.get("errors")) + _int(stats.get("queue_timeouts")) + _int(stats.get("pool_saturated"))


def _pool_detail(stats: Mapping[str, Any]) -> dict[str, Any]:
    """A pool's stats plus its bridge pids, pinned sessions and memory; ``errors`` made whole."""
    bridges = list(stats.get("bridges", []))
    detail = dict(stats)
    detail["bridge_errors"] = _int(stats.get("errors"))
    detail["errors"] = failed_calls(stats)
    detail["bridge_pids"] = [b["pid"] for b in bridges if b.get("pid")]
    detail["sessions"] = sum(_int(b.get("sessions")) for b in bridges)
    detail["rss_bytes"] = sum(_int(b.get("rss_bytes")) for b in bridges)
    detail["rss_mb"] = _mib(detail["rss_bytes"])
    return detail


def _mib(size: int) -> float:
    return round(size / (1024 * 1024), 1)


def _sums(items: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    totals = dict.fromkeys((*SUMMED, *EXTRA), 0)
    for item in items:
        for key in totals:
            totals[key] += _int(item.get(key))
    return totals


def summarize(replies: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Add up ``{worker hostname: PoolHost.stats()}`` into the shape of :func:`get_stats`.

    A pure function, so it is tested without workers; answers that are not pool
    stats (a worker without pools answers ``{"error": ...}``) are left out.
    """
    nodes: dict[str, Any] = {}
    pools: dict[str, dict[str, Any]] = {}
    for hostname in sorted(replies):
        reply = replies[hostname]
        if not isinstance(reply, Mapping) or not isinstance(reply.get("pools"), Mapping):
            continue
        detail = {name: _pool_detail(stats) for name, stats in sorted(reply["pools"].items())}
        node: dict[str, Any] = dict(_sums(detail.values()))
        node["rss_mb"] = _mib(node["rss_bytes"])
        node["run_id"] = reply.get("run_id")
        node["bridge_pids"] = [pid for pool in detail.values() for pid in pool["bridge_pids"]]
        node["pools"] = detail
        nodes[hostname] = node
        for name, pool in detail.items():
            pools.setdefault(name, {"nodes": [], "_items": []})
            pools[name]["nodes"].append(hostname)
            pools[name]["_items"].append(pool)
    total: dict[str, Any] = _sums(nodes.values())
    total["rss_mb"] = _mib(total["rss_bytes"])
    total["nodes"] = nodes
    total["pools"] = {
        name: {
            **_sums(entry["_items"]),
            "size": sum(_int(p.get("size")) for p in entry["_items"]),
            "nodes": entry["nodes"],
        }
        for name, entry in sorted(pools.items())
    }
    return total


def get_stats(
    app: Celery | None = None,
    *,
    timeout: float = DEFAULT_STATS_TIMEOUT,
    destination: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Live pool stats of every snakepit worker that answers within ``timeout`` seconds.

    Args:
        app: the Celery app whose broker to ask; None: the current app.
        timeout: seconds to wait for answers (the call takes this long unless
            ``destination`` names the workers, then it returns once all answered).
        destination: ask only these worker hostnames.

    Returns:
        The seed's counters summed (see the module docs), ``"nodes"`` per worker
        and ``"pools"`` per pool name.

    Example::

        stats = get_stats(app)
        stats["busy"], stats["errors"], stats["nodes"]["celery@web1"]["pools"]["python"]["bridge_pids"]
    """
    app = app_or_current(app)
    replies = app.control.broadcast(
        STATS_COMMAND,
        reply=True,
        timeout=timeout,
        destination=list(destination) if destination else None,
        limit=len(destination) if destination else None,
    )
    merged: dict[str, Mapping[str, Any]] = {}
    for reply in replies or []:
        merged.update(reply)
    return summarize(merged)

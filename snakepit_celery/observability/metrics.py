"""Prometheus metrics of one worker: call durations and outcomes, queue waits, pool gauges.

Opt-in: a worker serves ``/metrics`` only when its config sets ``metrics_port``
(``SNAKEPIT_METRICS_PORT``; ``metrics_addr`` / ``SNAKEPIT_METRICS_ADDR`` picks
the address, loopback by default). Each worker has its own registry, so two
hosts in one process never collide, and the endpoint shows only snakepit's
series (no process or GC collectors of the Python client).

Two kinds of series:

* events, counted as they happen by :class:`PrometheusTelemetry` (a
  :class:`~snakepit_celery.engine.telemetry.Telemetry`): ``snakepit_request_duration_seconds``
  (histogram by pool and command), ``snakepit_requests_total`` (by pool,
  command, outcome), ``snakepit_queue_wait_seconds``, ``snakepit_bridge_startup_seconds``,
  ``snakepit_bridge_exits_total``, ``snakepit_stream_chunks_total``;
* the pools' own figures, read from ``PoolHost.stats()`` at scrape time, so
  they agree exactly with ``get_stats()``: ``snakepit_pool_*`` gauges and
  counters, ``snakepit_bridge_restarts_total``.

The command label is capped (:data:`MAX_COMMAND_LABELS`): callers can send any
command name, and unknown names must not grow the series without bound.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from snakepit_celery.engine.telemetry import Telemetry
from snakepit_celery.observability.stats import failed_calls

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from snakepit_celery.engine.host import PoolHost

__all__ = ["MAX_COMMAND_LABELS", "MetricsServer", "PoolStatsCollector", "PrometheusTelemetry"]

#: Distinct command names labelled per pool; later ones are counted as ``other``.
MAX_COMMAND_LABELS = 200
#: Buckets of call durations, seconds: sub-millisecond calls up to long batch work.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Buckets of queue waits and bridge start-up times, seconds.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

#: Gauges read from each pool's stats: (metric suffix, stats key, help).
_POOL_GAUGES = (
    ("size", "size", "Bridges the pool is configured to keep."),
    ("bridges_alive", "workers", "Bridge processes alive."),
    ("available", "available", "Bridges idle and ready."),
    ("busy", "busy", "Bridges running a call."),
    ("queued", "queued", "Calls waiting for a free bridge."),
)
#: Counters read from each pool's stats.
_POOL_COUNTERS = (
    ("snakepit_pool_requests", "requests", "Calls the pool finished."),
    ("snakepit_pool_errors", "errors", "Calls that failed, whatever the reason (as get_stats counts them)."),
    ("snakepit_pool_queue_timeouts", "queue_timeouts", "Calls refused with QueueTimeout."),
    ("snakepit_pool_saturated", "pool_saturated", "Calls refused with PoolSaturated."),
    ("snakepit_bridge_restarts", "restarts", "Bridges replaced (crash, timeout, recycling, restart)."),
)


class PrometheusTelemetry(Telemetry):
    """Counts pool events into ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.durations = Histogram(
            "snakepit_request_duration_seconds",
            "Duration of calls on a bridge, from borrowing to result.",
            ("pool", "command"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.outcomes = Counter(
            "snakepit_requests",
            "Finished calls by outcome (ok, error, timeout, crashed, queue_timeout, saturated, cancelled).",
            ("pool", "command", "outcome"),
            registry=registry,
        )
        self.queue_waits = Histogram(
            "snakepit_queue_wait_seconds",
            "Time calls waited for a free bridge (only calls that waited).",
            ("pool",),
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.startups = Histogram(
            "snakepit_bridge_startup_seconds",
            "Time from a bridge's launch to SERVING.",
            ("pool",),
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.exits = Counter(
            "snakepit_bridge_exits", "Bridge processes that ended.", ("pool",), registry=registry
        )
        self.chunks = Counter(
            "snakepit_stream_chunks",
            "Chunks delivered by stream calls.",
            ("pool", "command"),
            registry=registry,
        )
        self._commands: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def _command(self, pool: str, command: str) -> str:
        """``command``, or ``other`` once the pool has :data:`MAX_COMMAND_LABELS` names."""
        with self._lock:
            known = self._commands.setdefault(pool, set())
            if command in known:
                return command
            if len(known) < MAX_COMMAND_LABELS:
                known.add(command)
                return command
        return "other"

    def request_finished(
        self,
        *,
        pool: str,
        command: str,
        duration: float,
        outcome: str,
        session_id: str | None,
        request_id: str | None,
    ) -> None:
        label = self._command(pool, command)
        self.durations.labels(pool, label).observe(duration)
        self.outcomes.labels(pool, label, outcome).inc()

    def bridge_started(self, *, pool: str, pid: int, startup_time: float) -> None:
        self.startups.labels(pool).observe(startup_time)

    def bridge_exited(self, *, pool: str, pid: int, reason: str) -> None:
        self.exits.labels(pool).inc()

    def queue_wait(self, *, pool: str, wait: float) -> None:
        self.queue_waits.labels(pool).observe(wait)

    def stream_chunks(self, *, pool: str, command: str, count: int) -> None:
        if count:
            self.chunks.labels(pool, self._command(pool, command)).inc(count)


class PoolStatsCollector(Collector):
    """Reads the pools' own figures at scrape time (nothing while no host is attached)."""

    def __init__(self, host: Callable[[], PoolHost | None]) -> None:
        self._host = host

    def collect(self) -> Iterator[Metric]:
        host = self._host()
        if host is None:
            return
        pools: dict[str, dict[str, Any]] = host.stats()["pools"]
        gauges = {
            key: GaugeMetricFamily(f"snakepit_pool_{suffix}", text, labels=("pool",))
            for suffix, key, text in _POOL_GAUGES
        }
        sessions = GaugeMetricFamily(
            "snakepit_pool_sessions", "Sessions pinned to the pool's bridges.", labels=("pool",)
        )
        rss = GaugeMetricFamily(
            "snakepit_pool_rss_bytes", "Resident memory of the pool's bridges.", labels=("pool",)
        )
        counters = {
            key: CounterMetricFamily(name, text, labels=("pool",)) for name, key, text in _POOL_COUNTERS
        }
        for name, stats in pools.items():
            for key, family in gauges.items():
                family.add_metric((name,), float(stats.get(key, 0)))
            for key, counter in counters.items():
                value = failed_calls(stats) if key == "errors" else stats.get(key, 0)
                counter.add_metric((name,), float(value))
            bridges = stats.get("bridges", [])
            sessions.add_metric((name,), float(sum(int(b.get("sessions") or 0) for b in bridges)))
            rss.add_metric((name,), float(sum(int(b.get("rss_bytes") or 0) for b in bridges)))
        yield from gauges.values()
        yield sessions
        yield rss
        yield from counters.values()


class MetricsServer:
    """The ``/metrics`` HTTP endpoint of one worker, on a daemon thread.

    Example::

        server = MetricsServer(registry, port=9100).start()
        server.url  # "http://127.0.0.1:9100/metrics"
        server.close()
    """

    def __init__(self, registry: CollectorRegistry, *, port: int, addr: str = "127.0.0.1") -> None:
        self.registry = registry
        self.port = port
        self.addr = addr
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        """Listen now; with port 0 the kernel picks a free port (see :attr:`port`).

        Raises:
            OSError: the address is taken or cannot be bound.
        """
        self._server, self._thread = start_http_server(self.port, addr=self.addr, registry=self.registry)
        self.port = int(self._server.server_port)
        return self

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)

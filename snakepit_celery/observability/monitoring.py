"""The telemetry a worker gives its pools: signals and log lines, plus Prometheus when asked.

The worker bootstep builds one :class:`WorkerTelemetry` per worker, hands it
to its ``PoolHost``, then calls :meth:`WorkerTelemetry.serve` with the host
(which opens the metrics endpoint if the config has ``metrics_port``) and
:meth:`WorkerTelemetry.close` when the worker stops.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from snakepit_celery.engine.telemetry import CallTrace, Telemetry
from snakepit_celery.errors import ConfigurationError
from snakepit_celery.observability import tracing
from snakepit_celery.observability.signals import SignalTelemetry

if TYPE_CHECKING:
    from snakepit_celery.config import SnakepitConfig
    from snakepit_celery.engine.host import PoolHost
    from snakepit_celery.observability.metrics import MetricsServer

__all__ = ["WorkerTelemetry"]

logger = logging.getLogger("snakepit_celery.monitoring")  # its name before observability/


class WorkerTelemetry(Telemetry):
    """Sends each pool event to every sink (signals/logs always, Prometheus if enabled).

    A failing sink is logged and skipped: telemetry must never break a call.
    """

    def __init__(self, config: SnakepitConfig) -> None:
        self.config = config
        self.sinks: list[Telemetry] = [SignalTelemetry()]
        self.host: PoolHost | None = None
        self.server: MetricsServer | None = None
        self._registry = None
        if config.metrics_port is not None:
            # Imported only when enabled: prometheus_client is the optional [metrics] extra.
            try:
                from prometheus_client import CollectorRegistry
            except ImportError:
                raise ConfigurationError(
                    "metrics_port: the metrics endpoint needs prometheus_client; "
                    "pip install 'snakepit-celery[metrics]' or unset metrics_port"
                ) from None

            from snakepit_celery.observability.metrics import PoolStatsCollector, PrometheusTelemetry

            self._registry = CollectorRegistry(auto_describe=False)
            self.sinks.append(PrometheusTelemetry(self._registry))
            self._registry.register(PoolStatsCollector(lambda: self.host))

    def serve(self, host: PoolHost) -> None:
        """Attach the started ``host``; open the metrics endpoint if the config asks for one.

        A port that cannot be bound is logged, not raised: metrics are not worth a
        worker that refuses to start.
        """
        self.host = host
        if self._registry is None or self.server is not None:
            return
        from snakepit_celery.observability.metrics import MetricsServer

        assert self.config.metrics_port is not None
        server = MetricsServer(self._registry, port=self.config.metrics_port, addr=self.config.metrics_addr)
        try:
            self.server = server.start()
        except OSError as exc:
            logger.error(
                "snakepit: metrics endpoint on %s:%s could not start: %s",
                self.config.metrics_addr,
                self.config.metrics_port,
                exc,
            )
            return
        logger.info("snakepit: metrics on %s", self.server.url)

    def close(self) -> None:
        """Close the metrics endpoint and detach the host."""
        server, self.server = self.server, None
        if server is not None:
            server.close()
        self.host = None

    # -- fan-out -----------------------------------------------------------------

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
        for sink in self.sinks:
            try:
                sink.request_finished(
                    pool=pool,
                    command=command,
                    duration=duration,
                    outcome=outcome,
                    session_id=session_id,
                    request_id=request_id,
                )
            except Exception:
                logger.exception("snakepit: telemetry sink %r failed", sink)

    def bridge_started(self, *, pool: str, pid: int, startup_time: float) -> None:
        for sink in self.sinks:
            try:
                sink.bridge_started(pool=pool, pid=pid, startup_time=startup_time)
            except Exception:
                logger.exception("snakepit: telemetry sink %r failed", sink)

    def bridge_exited(self, *, pool: str, pid: int, reason: str) -> None:
        for sink in self.sinks:
            try:
                sink.bridge_exited(pool=pool, pid=pid, reason=reason)
            except Exception:
                logger.exception("snakepit: telemetry sink %r failed", sink)

    def queue_wait(self, *, pool: str, wait: float) -> None:
        for sink in self.sinks:
            try:
                sink.queue_wait(pool=pool, wait=wait)
            except Exception:
                logger.exception("snakepit: telemetry sink %r failed", sink)

    def stream_chunks(self, *, pool: str, command: str, count: int) -> None:
        for sink in self.sinks:
            try:
                sink.stream_chunks(pool=pool, command=command, count=count)
            except Exception:
                logger.exception("snakepit: telemetry sink %r failed", sink)

    def trace_call(
        self, *, pool: str, command: str, kind: str, session_id: str | None, request_id: str | None
    ) -> CallTrace:
        """OpenTelemetry spans when an SDK is configured in the worker (see :mod:`.tracing`)."""
        return tracing.trace_call(
            pool=pool, command=command, kind=kind, session_id=session_id, request_id=request_id
        )

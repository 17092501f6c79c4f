"""Observability: what the engine's hooks report, and to whom.

``tracing`` (OpenTelemetry spans), ``signals`` (Celery-style signals and the
request log), ``metrics`` (Prometheus), ``monitoring`` (a worker's telemetry,
putting them together) and ``stats`` (the pools' counters gathered over
Celery's control mailbox). The engine only calls the hooks of
:mod:`snakepit_celery.engine.telemetry`; this layer implements them.
"""

"""The Celery app the integration tests' workers run (``celery -A itapp worker``).

Both sides build it with :func:`make_app`: the worker from ``IT_*`` variables,
the test from the same values, so queue names, the control exchange and the
event exchange are private to one worker group and nothing collides on the
shared RabbitMQ.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery, shared_task

from snakepit_celery import SnakepitConfig, install


def make_app(*, broker: str, backend: str, prefix: str, config: SnakepitConfig) -> Celery:
    app = Celery(f"it-{prefix}", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_default_queue=f"{prefix}.default",
        control_exchange=f"{prefix}.control",
        event_exchange=f"{prefix}.ev",
        broker_connection_retry_on_startup=True,
    )
    install(app, config)
    return app


@shared_task(name="itest.total")
def total(results: list[dict[str, Any]]) -> int | float:
    """Chord callback: the sum of compute results."""
    return sum(r["result"] for r in results)


@shared_task(name="itest.echoed_bytes")
def echoed_bytes(results: Any) -> Any:
    """Chain/chord callback: the bytes that ``echo`` answered (a list of them from a chord),
    so the caller sees whether the callback got plain bytes and gives them back."""
    datas = [r["echoed"]["data"] for r in (results if isinstance(results, list) else [results])]
    for data in datas:
        if not isinstance(data, bytes):
            raise TypeError(f"the callback got a {type(data).__name__}, not bytes")
    return datas if isinstance(results, list) else datas[0]


@shared_task(name="itest.noop")
def noop() -> None:
    """A plain Celery task, no bridge involved."""


if "IT_PREFIX" in os.environ:
    app = make_app(
        broker=os.environ["IT_BROKER"],
        backend=os.environ["IT_BACKEND"],
        prefix=os.environ["IT_PREFIX"],
        config=SnakepitConfig.from_env(),
    )
    if os.environ.get("IT_TRANSPORT_OPTIONS"):  # e.g. a short visibility_timeout (test_batch_recovery)
        app.conf.broker_transport_options = json.loads(os.environ["IT_TRANSPORT_OPTIONS"])
    if os.environ.get("SNAKEPIT_OTEL_TEST_DIR"):  # the tracing tests: the SDK and Celery's instrumentation
        import otel_testing
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        otel_testing.setup("worker")
        CeleryInstrumentor().instrument()

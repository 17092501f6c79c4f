"""One OpenTelemetry trace from the caller's span through Celery and the pool into the bridge.

Real parts on every side: the real SDK in this process (in-memory exporter)
and Celery's instrumentation on both ends; a real worker subprocess and real
Python, Node.js and Ruby bridges, the worker and the Python and Node.js
bridges exporting their spans to files (``otel_testing``, ``otel_handler.*``)
that the test reads. For each call kind the trace is followed link by link:
the caller's span, Celery's publish and run spans, the worker's checkout
and bridge-call spans, the bridge's server span (and a handler's own span).
"""

from __future__ import annotations

import gc
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import otel_testing
import pytest
from itworkers import HERE, Worker, WorkerFactory, wait_for
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from snakepit_celery import CommandError, batch_map, stream
from snakepit_celery.observability.tracing import CHUNK_EVENTS

NODE_HANDLER = HERE / "otel_handler.js"
LANGS = ("python", "node")


@pytest.fixture(scope="module")
def caller_spans() -> Iterator[InMemorySpanExporter]:
    """The caller's side: the SDK with an in-memory exporter, and Celery's instrumentation."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # NOTE: a process gets one provider; reuse it
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument()
    try:
        yield exporter
    finally:
        instrumentor.uninstrument()
        exporter.shutdown()  # the processor stays; a shut exporter keeps nothing


@pytest.fixture(scope="module")
def spans_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("otel")


@pytest.fixture(scope="module")
def worker(
    module_worker_factory: WorkerFactory, spans_dir: Path, caller_spans: InMemorySpanExporter
) -> Iterator[Worker]:
    if shutil.which("node") is None or not (HERE.parent.parent / "bridges/node/node_modules").is_dir():
        pytest.skip("Node.js or the Node.js bridge's packages (make node-bridge) are missing")
    pools: dict[str, dict[str, Any]] = {
        "python": {"size": 2, "handler": "otel_handler:TracedShowcase"},
        "node": {"adapter": "node", "size": 1, "handler": str(NODE_HANDLER)},
        "ruby": {"adapter": "ruby", "size": 1},
    }
    env = {"SNAKEPIT_OTEL_TEST_DIR": str(spans_dir), "PYTHONPATH": str(HERE)}
    yield module_worker_factory(pools, name="traced", env=env)
    gc.collect()  # results in reference cycles unsubscribe while the test Redis still runs


def _traced(tracer_name: str, call: Any) -> tuple[Any, dict[str, Any]]:
    """Run ``call()`` under a fresh caller span; its value, and that span's ids."""
    tracer = trace.get_tracer(tracer_name)
    with tracer.start_as_current_span(f"caller {uuid.uuid4().hex[:6]}") as span:
        value = call()
    ctx = span.get_span_context()
    return value, {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


def _caller_records(exporter: InMemorySpanExporter, trace_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in (otel_testing.span_record(s, "caller") for s in exporter.get_finished_spans())
        if r["trace_id"] == trace_id
    ]


def _one(spans: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [s for s in spans if all(s.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{len(found)} spans match {match}; the trace has:\n" + "\n".join(
        f"  {s['service']}: {s['name']} ({s['span_id']} <- {s['parent_id']})" for s in spans
    )
    return found[0]


def _trace(
    spans_dir: Path, exporter: InMemorySpanExporter, root: dict[str, Any], wanted: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """The whole trace of ``root`` once every (service, span name) in ``wanted`` has arrived.

    Each process writes a span when it ends, so the worker's task span may come
    after the bridge's (and after the caller got its result): wait for all named.
    """

    def complete() -> list[dict[str, Any]] | None:
        spans = _caller_records(exporter, root["trace_id"]) + [
            s for s in otel_testing.read_spans(spans_dir) if s["trace_id"] == root["trace_id"]
        ]
        have = {(s["service"], s["name"]) for s in spans}
        return spans if all(w in have for w in wanted) else None

    return wait_for(complete, 20, f"the spans {wanted} of trace {root['trace_id']}")  # type: ignore[no-any-return]


def _chain(spans: list[dict[str, Any]], root: dict[str, Any], task: str, kind: str, command: str, lang: str):
    """Check caller -> publish -> run -> (checkout, bridge call) -> bridge span; the last three."""
    caller = _one(spans, service="caller", span_id=root["span_id"])
    publish = _one(spans, service="caller", name=f"apply_async/{task}", parent_id=caller["span_id"])
    run = _one(spans, service="worker", name=f"run/{task}", parent_id=publish["span_id"])
    checkout = _one(spans, service="worker", name=f"snakepit.checkout {lang}", parent_id=run["span_id"])
    call = _one(spans, service="worker", name=f"snakepit.{kind} {command}", parent_id=run["span_id"])
    assert call["kind"] == "CLIENT"
    assert call["attributes"]["snakepit.pool"] == lang
    assert call["attributes"]["snakepit.command"] == command
    assert checkout["attributes"]["snakepit.bridge.pid"] == call["attributes"]["snakepit.bridge.pid"]
    rpc = {"execute": "Execute", "stream": "ExecuteStream", "batch": "ExecuteBatch"}[kind]
    server = _one(spans, service=f"bridge-{lang}", name=f"{rpc} {command}")
    assert server["parent_id"] == call["span_id"], "the bridge's span is not the child of the worker's call"
    assert server["kind"] == "SERVER"
    assert server["attributes"]["snakepit.command"] == command
    return checkout, call, server


@pytest.mark.parametrize("lang", LANGS)
def test_execute_is_one_trace_into_the_bridge_and_the_handlers_own_span(
    worker: Worker, caller_spans: InMemorySpanExporter, spans_dir: Path, lang: str
) -> None:
    result, root = _traced(
        __name__, lambda: worker.execute.delay("traced_sum", {"values": [1, 2, 3]}, pool=lang).get(timeout=20)
    )
    assert result == {"sum": 6}
    spans = _trace(
        spans_dir, caller_spans, root, [(f"bridge-{lang}", "handler.sum"), ("worker", "run/snakepit.execute")]
    )
    checkout, call, server = _chain(spans, root, "snakepit.execute", "execute", "traced_sum", lang)
    assert call["attributes"]["snakepit.outcome"] == server["attributes"]["snakepit.outcome"] == "ok"
    assert {s["status"] for s in (checkout, call, server)} == {"UNSET"}
    own = _one(spans, service=f"bridge-{lang}", name="handler.sum")
    assert own["parent_id"] == server["span_id"]
    assert own["attributes"]["values"] == 3


@pytest.mark.parametrize("lang", LANGS)
def test_execute_in_session_is_one_trace_with_the_session_id(
    worker: Worker, caller_spans: InMemorySpanExporter, spans_dir: Path, lang: str
) -> None:
    sid = f"traced-{lang}-{uuid.uuid4().hex[:8]}"
    task = worker.app.tasks["snakepit.execute_in_session"]
    result, root = _traced(__name__, lambda: task.delay(sid, "ping", {}, pool=lang).get(timeout=30))
    assert result["status"] == "ok" or "pid" in result
    spans = _trace(
        spans_dir,
        caller_spans,
        root,
        [(f"bridge-{lang}", "Execute ping"), ("worker", "run/snakepit.execute_in_session")],
    )
    _, call, server = _chain(spans, root, "snakepit.execute_in_session", "execute", "ping", lang)
    assert call["attributes"]["snakepit.session_id"] == sid
    assert server["attributes"]["snakepit.session_id"] == sid
    assert server["attributes"]["snakepit.outcome"] == "ok"


@pytest.mark.parametrize("lang", LANGS)
def test_a_stream_is_one_trace_with_its_chunks_as_capped_events(
    worker: Worker, caller_spans: InMemorySpanExporter, spans_dir: Path, lang: str
) -> None:
    count = CHUNK_EVENTS + 50

    def consume() -> list[Any]:
        with stream("ping_stream", {"count": count, "interval": 0}, pool=lang, app=worker.app) as s:
            return list(s)

    chunks, root = _traced(__name__, consume)
    assert len(chunks) == count
    spans = _trace(
        spans_dir,
        caller_spans,
        root,
        [(f"bridge-{lang}", "ExecuteStream ping_stream"), ("worker", "run/snakepit.execute_stream")],
    )
    _, call, server = _chain(spans, root, "snakepit.execute_stream", "stream", "ping_stream", lang)
    for span in (call, server):
        assert span["attributes"]["snakepit.chunks"] == count
        assert span["attributes"]["snakepit.outcome"] == "ok"
        events = [e for e in span["events"] if e["name"] == "chunk"]
        assert len(events) == CHUNK_EVENTS, f"{span['service']}: {len(events)} chunk events"


@pytest.mark.parametrize("lang", LANGS)
def test_batch_map_is_one_trace_into_the_bridge(
    worker: Worker, caller_spans: InMemorySpanExporter, spans_dir: Path, lang: str
) -> None:
    items = [{"operation": "add", "a": i, "b": 1} for i in range(6)]
    sig = batch_map("compute", items, pool=lang, chunk_size=6, app=worker.app)
    results, root = _traced(__name__, lambda: sig.apply_async().get(timeout=30))
    assert [r["result"] for r in results] == [i + 1 for i in range(6)]
    spans = _trace(
        spans_dir,
        caller_spans,
        root,
        [
            (f"bridge-{lang}", "ExecuteBatch compute"),
            ("worker", "run/snakepit.execute_batch"),
            ("worker", "run/snakepit.batch_join"),
        ],
    )
    caller = _one(spans, service="caller", span_id=root["span_id"])
    publish = _one(
        spans, service="caller", name="apply_async/snakepit.execute_batch", parent_id=caller["span_id"]
    )
    run = _one(spans, service="worker", name="run/snakepit.execute_batch", parent_id=publish["span_id"])
    # The batch runs in slices, each one ExecuteBatch call on a bridge, side by side.
    calls = {s["span_id"]: s for s in spans if s["name"] == "snakepit.batch compute"}
    assert calls and {s["parent_id"] for s in calls.values()} == {run["span_id"]}
    checkouts = [s for s in spans if s["name"] == f"snakepit.checkout {lang}"]
    assert len(checkouts) == len(calls) and {s["parent_id"] for s in checkouts} == {run["span_id"]}
    servers = [s for s in spans if s["service"] == f"bridge-{lang}" and s["name"] == "ExecuteBatch compute"]
    assert sorted(s["parent_id"] for s in servers) == sorted(calls), "each slice's bridge span under its call"
    assert sum(s["attributes"]["snakepit.batch.items"] for s in servers) == len(items)
    for span in [*calls.values(), *servers]:
        assert span["attributes"]["snakepit.outcome"] == "ok"
    _one(spans, service="worker", name="run/snakepit.batch_join")  # the chord's body: the same trace


@pytest.mark.parametrize("lang", LANGS)
def test_a_failed_command_marks_its_spans_with_the_error_class(
    worker: Worker, caller_spans: InMemorySpanExporter, spans_dir: Path, lang: str
) -> None:
    def fail() -> BaseException:
        with pytest.raises(CommandError) as caught:
            worker.execute.delay("compute", {"operation": "divide", "a": 1, "b": 0}, pool=lang).get(
                timeout=20
            )
        return caught.value

    error, root = _traced(__name__, fail)
    spans = _trace(
        spans_dir,
        caller_spans,
        root,
        [(f"bridge-{lang}", "Execute compute"), ("worker", "run/snakepit.execute")],
    )
    _, call, server = _chain(spans, root, "snakepit.execute", "execute", "compute", lang)
    for span in (call, server):
        assert span["status"] == "ERROR"
        assert any(e["name"] == "exception" for e in span["events"]), span
    assert call["attributes"]["error.type"] == "CommandError"
    assert (
        call["attributes"]["snakepit.remote_type"] == server["attributes"]["error.type"] == error.remote_type
    )
    assert server["attributes"]["snakepit.outcome"] == "command_error"


def test_the_ruby_bridge_hands_the_traceparent_to_the_handler_and_logs_it(
    worker: Worker, caller_spans: InMemorySpanExporter, spans_dir: Path
) -> None:
    _, root = _traced(__name__, lambda: worker.execute.delay("ping", {}, pool="ruby").get(timeout=20))
    spans = _trace(spans_dir, caller_spans, root, [("worker", "snakepit.execute ping")])
    call = _one(spans, service="worker", name="snakepit.execute ping")
    traceparent = f"00-{root['trace_id']}-{call['span_id']}-"  # then the flags
    line = f"ping: traceparent {traceparent}"
    wait_for(
        lambda: line in worker.process.log(), 20, f"{line!r} in the log:\n{worker.process.log()[-3000:]}"
    )

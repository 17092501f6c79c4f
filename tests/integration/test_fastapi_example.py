"""examples/fastapi_app with a real uvicorn and a real worker: an endpoint per kind of call.

The site is started as the example's docstring says (``tests/fastapi_site.py``)
and asked over HTTP; the progress page in a browser is ``tests/e2e``'s.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi_site import fastapi_site, request
from itworkers import SHARED_ROOTS

from snakepit_celery.embedded import EmbeddedRedis

pytest.importorskip("fastapi", reason="the [fastapi] extra is not installed")


@pytest.fixture(scope="module")
def site(redis_server: EmbeddedRedis) -> Iterator[str]:
    with fastapi_site(redis_server.url(13), pool_size=2) as running:
        SHARED_ROOTS.update(running.pids)  # checked for orphans once the module is over
        try:
            yield running.url
        finally:
            SHARED_ROOTS.difference_update(running.pids)


def test_execute_endpoints(site: str) -> None:
    assert request(site + "/add?a=5&b=3") == (200, {"sum": 8})
    status, body = request(site + "/execute", {"command": "echo", "args": {"n": None, "l": [1, "a"]}})
    assert status == 200 and body["result"]["echoed"] == {"n": None, "l": [1, "a"]}
    status, body = request(site + "/execute", {"command": "no_such_command"})
    assert status == 400 and body["error"] == "UnknownCommand"
    status, body = request(site + "/execute", {"command": "ping", "pool": "pyhton"})
    assert status == 400 and body["error"] == "PoolNotFound" and "did you mean 'python'" in body["message"]
    status, body = request(
        site + "/execute", {"command": "compute", "args": {"operation": "divide", "a": 1, "b": 0}}
    )
    assert (status, body["error"]) == (502, "CommandError")


def test_session_endpoint_keeps_the_state(site: str) -> None:
    assert request(site + "/sessions/web-1/set_counter", {"value": 5})[1] == {"result": {"value": 5}}
    for _ in range(2):
        request(site + "/sessions/web-1/increment_counter", {"by": 1})
    assert request(site + "/sessions/web-1/get_counter", {})[1] == {"result": {"value": 7}}
    status, body = request(site + "/sessions/bad%20id/get_counter", {})
    assert status == 400 and body["error"] == "InvalidSessionId"


def test_stream_and_batch_endpoints(site: str) -> None:
    status, body = request(site + "/stream", {"command": "ping_stream", "args": {"count": 5}})
    assert status == 200 and body["outcome"] == "ok"
    assert [c["seq"] for c in body["chunks"]] == list(range(5))
    items = [{"operation": "add", "a": i, "b": 1} for i in range(20)] + [{"operation": "nope"}]
    status, body = request(site + "/batch", {"command": "compute", "items": items})
    assert status == 200
    assert [r["result"] for r in body["results"][:20]] == [i + 1 for i in range(20)]
    assert body["results"][20]["error"] == "InvalidArguments"


def sse_events(url: str, last_event_id: str | None = None, limit: int = 10_000) -> list[tuple[str, str, Any]]:
    """``(id, event, data)`` of a text/event-stream until its ``final`` event (or ``limit``)."""
    req = urllib.request.Request(url)
    if last_event_id is not None:
        req.add_header("Last-Event-ID", last_event_id)
    events: list[tuple[str, str, Any]] = []
    fields: dict[str, str] = {}
    with urllib.request.urlopen(req, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line:
                key, _, value = line.partition(": ")
                fields[key] = value
                continue
            events.append((fields.get("id", ""), fields["event"], json.loads(fields["data"])))
            fields = {}
            if events[-1][1] == "final" or len(events) >= limit:
                break
    return events


def test_progress_events_resume_after_the_last_event_id(site: str) -> None:
    status, body = request(site + "/progress/start", {"total_rows": 10, "chunk_size": 1, "delay": 0.01})
    assert status == 202
    events_url = f"{site}/progress/{body['task_id']}/events"
    first = sse_events(events_url)
    assert [e[1] for e in first] == ["chunk"] * 9 + ["final"]
    assert first[-1][2]["outcome"] == "ok" and first[-1][2]["processed_rows"] == 10
    resumed = sse_events(events_url, last_event_id=first[5][0])  # as a reconnecting browser
    assert [e[0] for e in resumed] == [e[0] for e in first[6:]]


def test_progress_cancel_stops_the_job(site: str) -> None:
    _, body = request(site + "/progress/start", {"total_rows": 10_000, "chunk_size": 1, "delay": 0.05})
    events_url = f"{site}/progress/{body['task_id']}/events"
    assert len(sse_events(events_url, limit=2)) == 2  # it runs
    assert request(f"{site}/progress/{body['task_id']}/cancel", {}) == (200, {"ok": True})
    started = time.monotonic()
    final = sse_events(events_url)[-1]
    assert final[1] == "final" and final[2]["outcome"] == "cancelled", final
    assert time.monotonic() - started < 10

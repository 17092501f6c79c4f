"""A live progress page: ``process_large_dataset`` streamed to the browser by Server-Sent Events.

    GET  /progress                   the page (starts a job, then follows it)
    POST /progress/start             {"total_rows": 20000, "chunk_size": 1000, "delay": 0.05}
                                     -> {"task_id": ...}
    GET  /progress/<task_id>/events  text/event-stream: one ``chunk`` event per chunk, then ``final``

The events view reads the stream from its task id alone (``Stream.follow``),
so it works from any web process, and a browser that reconnects sends
``Last-Event-ID`` and resumes after the last chunk it saw: nothing is missed
or shown twice. Closing the page does not cancel the job; ``POST
/progress/<task_id>/cancel`` does.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from celery import Celery
from flask import Blueprint, Response, current_app, jsonify, request

from snakepit_celery import SnakepitError
from snakepit_celery.streaming import Stream, stream

bp = Blueprint("progress", __name__)

#: Limits on what a visitor may ask the bridge for.
MAX_ROWS = 10_000_000
MAX_DELAY = 1.0


def _celery() -> Celery:
    return current_app.extensions["celery"]  # type: ignore[no-any-return]


def _sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


@bp.post("/progress/start")
def start() -> Any:
    body = request.get_json(silent=True) or {}
    try:
        args = {
            "total_rows": min(MAX_ROWS, max(1, int(body.get("total_rows", 20_000)))),
            "chunk_size": max(1, int(body.get("chunk_size", 1_000))),
            "delay": min(MAX_DELAY, max(0.0, float(body.get("delay", 0.05)))),
        }
    except (TypeError, ValueError) as exc:
        return jsonify(error="InvalidArguments", message=f"numbers expected: {exc}"), 400
    job = stream("process_large_dataset", args, app=_celery())
    job.close()  # this view only starts it; the events view reads it
    return jsonify(task_id=job.task_id), 202


@bp.post("/progress/<task_id>/cancel")
def cancel(task_id: str) -> Any:
    try:
        Stream.follow(task_id, app=_celery()).cancel("cancelled from the progress page")
    except SnakepitError as exc:
        return jsonify(error=type(exc).__name__, message=str(exc)), 400
    return jsonify(ok=True)


@bp.get("/progress/<task_id>/events")
def events(task_id: str) -> Response:
    last = request.headers.get("Last-Event-ID", "")
    after = int(last) if last.isdigit() else None
    celery = _celery()

    def generate() -> Iterator[str]:
        try:
            reader = Stream.follow(task_id, app=celery, after=after, idle_timeout=60, pace=True)
        except SnakepitError as exc:
            yield _sse("final", {"is_final": True, "outcome": "error", "error": {"message": str(exc)}})
            return
        # Leaving (the browser went away) closes the reader without cancelling the job.
        with contextlib.closing(reader):
            try:
                for chunk in reader:
                    yield _sse("final" if chunk.get("is_final") else "chunk", chunk, reader.last_seq)
            except SnakepitError as exc:
                final = reader.result or {"is_final": True, "outcome": "error"}
                final.setdefault("error", {"type": type(exc).__name__, "message": str(exc)})
                yield _sse("final", final)

    return Response(
        generate(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@bp.get("/progress")
def page() -> Response:
    return Response(PAGE, mimetype="text/html")


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>snakepit: live progress</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
  .bar { width: 32rem; height: 1.6rem; background: #e5e7eb; border-radius: .4rem; overflow: hidden; }
  .fill { height: 100%; width: 0; background: #16a34a; transition: width .1s linear; }
  #percent { font-size: 2rem; font-weight: 600; margin: .6rem 0; }
  #status { color: #555; }
  button { margin-top: 1rem; }
</style>
</head>
<body>
<h1>process_large_dataset</h1>
<div class="bar"><div class="fill" id="fill"></div></div>
<div id="percent">0%</div>
<div id="rows">waiting for the worker...</div>
<div id="status" data-outcome="">starting</div>
<button id="cancel">Cancel</button>
<script>
const params = new URLSearchParams(location.search);
const job = {
  total_rows: Number(params.get("rows") || 20000),
  chunk_size: Number(params.get("chunk") || 1000),
  delay: Number(params.get("delay") || 0.05),
};
const $ = (id) => document.getElementById(id);
function show(chunk) {
  const pct = chunk.progress_percent ?? 0;
  $("fill").style.width = pct + "%";
  $("percent").textContent = Math.round(pct) + "%";
  if (chunk.total_rows !== undefined) {
    $("rows").textContent = chunk.processed_rows + " / " + chunk.total_rows + " rows";
  }
}
async function run() {
  const started = await fetch("/progress/start", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(job),
  });
  const {task_id} = await started.json();
  $("status").textContent = "task " + task_id;
  $("cancel").onclick = () => fetch("/progress/" + task_id + "/cancel", {method: "POST"});
  const source = new EventSource("/progress/" + task_id + "/events");
  source.addEventListener("chunk", (e) => show(JSON.parse(e.data)));
  source.addEventListener("final", (e) => {
    const final = JSON.parse(e.data);
    source.close();
    $("fill").style.transition = "none";  // the end is shown as it is, not animated
    if (final.progress_percent !== undefined) show(final);
    const why = final.error ? ": " + (final.error.type || "") + " " + final.error.message : "";
    $("status").textContent = "done: " + final.outcome + why;
    $("status").dataset.outcome = final.outcome;
  });
}
run();
</script>
</body>
</html>
"""

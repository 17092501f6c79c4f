"""A live progress page: ``process_large_dataset`` streamed to the browser by Server-Sent Events.

    GET  /progress                   the page (starts a job, then follows it)
    POST /progress/start             {"total_rows": 20000, "chunk_size": 1000, "delay": 0.05}
                                     -> {"task_id": ...}
    GET  /progress/<task_id>/events  text/event-stream: one ``chunk`` event per chunk, then ``final``
    POST /progress/<task_id>/cancel  stops the job (its bridge generator is closed)

The events endpoint reads the stream on the event loop from its task id alone
(``AsyncStream.follow``), so it works from any web process and holds no
thread while it waits; a browser that reconnects sends ``Last-Event-ID`` and
resumes after the last chunk it saw. Closing the page does not cancel the
job (the reader only stops reading); the cancel endpoint does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel

from snakepit_celery import AsyncStream, SnakepitError, astream

router = APIRouter()

#: Limits on what a visitor may ask the bridge for.
MAX_ROWS = 10_000_000
MAX_DELAY = 1.0


def _celery() -> Any:
    from app import celery_app  # NOTE: app imports this module

    return celery_app


def _sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


class Job(BaseModel):
    total_rows: int = 20_000
    chunk_size: int = 1_000
    delay: float = 0.05


@router.post("/progress/start", status_code=202)
async def start(job: Job) -> dict[str, str]:
    args = {
        "total_rows": min(MAX_ROWS, max(1, job.total_rows)),
        "chunk_size": max(1, job.chunk_size),
        "delay": min(MAX_DELAY, max(0.0, job.delay)),
    }
    started = await astream("process_large_dataset", args, app=_celery()).start()
    await started.aclose()  # this endpoint only starts it; the events endpoint reads it
    return {"task_id": started.task_id}


@router.post("/progress/{task_id}/cancel")
async def cancel(task_id: str) -> Any:
    try:
        reader = AsyncStream.follow(task_id, app=_celery())
    except SnakepitError as exc:
        return JSONResponse({"error": type(exc).__name__, "message": str(exc)}, 400)
    reader.cancel("cancelled from the progress page")
    await reader.aclose()  # the cancel request is in Redis once this returns
    return {"ok": True}


@router.get("/progress/{task_id}/events")
async def events(task_id: str, last_event_id: Annotated[str, Header()] = "") -> StreamingResponse:
    after = int(last_event_id) if last_event_id.isdigit() else None

    async def generate() -> AsyncIterator[str]:
        try:
            reader = AsyncStream.follow(task_id, app=_celery(), after=after, idle_timeout=60, pace=True)
        except SnakepitError as exc:
            yield _sse("final", {"is_final": True, "outcome": "error", "error": {"message": str(exc)}})
            return
        try:
            async for chunk in reader:
                yield _sse("final" if chunk.get("is_final") else "chunk", chunk, reader.last_seq)
        except SnakepitError as exc:
            final = reader.result or {"is_final": True, "outcome": "error"}
            final.setdefault("error", {"type": type(exc).__name__, "message": str(exc)})
            yield _sse("final", final)
        finally:
            await reader.aclose()  # the browser went away: stop reading, the job goes on

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(generate(), media_type="text/event-stream", headers=headers)


@router.get("/progress", response_class=HTMLResponse)
async def page() -> str:
    return PAGE


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>snakepit on FastAPI: live progress</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
  .bar { width: 32rem; height: 1.6rem; background: #e5e7eb; border-radius: .4rem; overflow: hidden; }
  .fill { height: 100%; width: 0; background: #0ea5e9; transition: width .1s linear; }
  #percent { font-size: 2rem; font-weight: 600; margin: .6rem 0; }
  #status { color: #555; }
  button { margin-top: 1rem; }
</style>
</head>
<body>
<h1>process_large_dataset, on FastAPI</h1>
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

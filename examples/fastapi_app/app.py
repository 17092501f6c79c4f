"""A small FastAPI app whose endpoints await snakepit calls on the event loop (no thread per call).

Run it (a Redis on localhost, or set CELERY_BROKER_URL / CELERY_RESULT_BACKEND)::

    pip install -e ".[fastapi]"     # fastapi and uvicorn
    cd examples/fastapi_app
    celery -A app:celery_app worker --loglevel INFO     # hosts the python pool
    uvicorn app:app                                     # http://127.0.0.1:8000/add?a=5&b=3

Endpoints, one per kind of call:
    GET  /add?a=5&b=3               aexecute: {"sum": 8}
    POST /execute                   {"command": "echo", "args": {...}, "pool": null} -> {"result": ...}
    POST /sessions/<id>/<command>   aexecute_in_session, the body is the args -> {"result": ...}
    POST /stream                    astream: {"command": "ping_stream", "args": {"count": 3}}
                                    -> {"chunks": [...], "outcome": "ok"}
    POST /batch                     {"command": "compute", "items": [{...}, ...]} -> {"results": [...]}
                                    (the items' calls awaited together; a failed one is its error)
    GET  /progress                  a live progress bar fed by Server-Sent Events (see progress.py)

A snakepit error answers with its class and message: 400 for what the request
got wrong (unknown command or pool, bad arguments or session id), 502 for the rest.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from celery import Celery
from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from snakepit_celery import (
    InvalidArguments,
    InvalidSessionId,
    PoolNotFound,
    SnakepitError,
    UnknownCommand,
    aclose_clients,
    aexecute,
    aexecute_in_session,
    astream,
    install,
)

celery_app = Celery(
    "fastapi_app",
    broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/1"),
)
install(celery_app)  # the worker of this app hosts the pools; the calls route to them

#: Chunks POST /stream collects at most (a longer stream belongs on the progress page).
MAX_CHUNKS = 1_000
#: Items POST /batch takes at most.
MAX_ITEMS = 1_000
#: Seconds an endpoint awaits a result.
WAIT = 30.0


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await aclose_clients()  # the loop's Redis connections, before uvicorn closes the loop


app = FastAPI(title="snakepit-celery FastAPI example", lifespan=lifespan)

from progress import router as progress_router  # noqa: E402  (the live progress page, SSE)

app.include_router(progress_router)


def error_body(exc: Exception) -> dict[str, str]:
    return {"error": type(exc).__name__, "message": str(exc)}


@app.exception_handler(SnakepitError)
async def snakepit_error(_: Request, exc: SnakepitError) -> JSONResponse:
    bad_request = (UnknownCommand, PoolNotFound, InvalidArguments, InvalidSessionId)
    return JSONResponse(error_body(exc), status_code=400 if isinstance(exc, bad_request) else 502)


@app.get("/add")
async def add(a: int = 0, b: int = 0) -> dict[str, Any]:
    result = await aexecute("compute", {"operation": "add", "a": a, "b": b}, wait=WAIT, app=celery_app)
    return {"sum": result["result"]}


class Call(BaseModel):
    command: str
    args: Any = None
    pool: str | None = None


class Batch(BaseModel):
    command: str
    items: list[Any]


@app.post("/execute")
async def execute(call: Call) -> dict[str, Any]:
    return {"result": await aexecute(call.command, call.args, pool=call.pool, wait=WAIT, app=celery_app)}


@app.post("/sessions/{session_id}/{command}")
async def session_call(session_id: str, command: str, args: Annotated[Any, Body()] = None) -> dict[str, Any]:
    return {"result": await aexecute_in_session(session_id, command, args, wait=WAIT, app=celery_app)}


@app.post("/stream")
async def collect_stream(call: Call) -> dict[str, Any]:
    chunks = []
    async with astream(call.command, call.args, pool=call.pool, app=celery_app) as s:
        async for chunk in s:  # leaving the block early (MAX_CHUNKS) cancels the stream
            chunks.append(chunk)
            if len(chunks) >= MAX_CHUNKS:
                break
    return {"chunks": chunks, "outcome": s.outcome}


@app.post("/batch")
async def batch(body: Batch) -> Any:
    if len(body.items) > MAX_ITEMS:
        return JSONResponse({"error": "InvalidArguments", "message": f"at most {MAX_ITEMS} items"}, 400)
    calls = [aexecute(body.command, item, wait=WAIT, app=celery_app) for item in body.items]
    results = await asyncio.gather(*calls, return_exceptions=True)
    return {"results": [error_body(r) if isinstance(r, Exception) else r for r in results]}

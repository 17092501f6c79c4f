"""Views that call snakepit commands through Celery.

GET  /add/?a=5&b=3        waits for the result: {"sum": 8}
GET  /async/add/?a=5&b=3  the same from an async view: awaits it with ``aexecute`` (no thread waits)
POST /tasks/              {"command": "compute", "args": {...}, "pool": null} -> 202 {"id": ...}
GET  /tasks/<id>/         {"state": "SUCCESS", "result": ...}, or the error's class and message
GET  /health/             {"status": "ok"}: the web process is up (no broker round trip)
"""

from __future__ import annotations

import json
from typing import Any

from celery.result import AsyncResult
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from snakepit_celery import SnakepitError, aexecute, execute

#: Seconds the synchronous view waits for its result.
RESULT_TIMEOUT = 10.0


def _int_param(request: HttpRequest, name: str) -> int:
    raw = request.GET.get(name, "0")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number") from None


@require_GET
def add(request: HttpRequest) -> JsonResponse:
    """Send ``compute`` to a bridge and wait for the sum."""
    try:
        a, b = _int_param(request, "a"), _int_param(request, "b")
    except ValueError as exc:
        return JsonResponse({"error": "bad request", "message": str(exc)}, status=400)
    try:
        result = execute.delay("compute", {"operation": "add", "a": a, "b": b}).get(timeout=RESULT_TIMEOUT)
    except SnakepitError as exc:
        return JsonResponse({"error": type(exc).__name__, "message": str(exc)}, status=502)
    return JsonResponse({"sum": result["result"]})


@require_GET
async def add_async(request: HttpRequest) -> JsonResponse:
    """``add`` as an async view: the result is awaited on the event loop, no thread blocks on it.

    Serve it with an ASGI server (``uvicorn djproject.asgi:application``): its one
    loop shares the Redis connections of every request. Under ``runserver`` (WSGI)
    Django runs each async view in a loop of its own; it works, with connections
    of its own per request.
    """
    try:
        a, b = _int_param(request, "a"), _int_param(request, "b")
    except ValueError as exc:
        return JsonResponse({"error": "bad request", "message": str(exc)}, status=400)
    try:
        result = await aexecute("compute", {"operation": "add", "a": a, "b": b}, wait=RESULT_TIMEOUT)
    except SnakepitError as exc:
        return JsonResponse({"error": type(exc).__name__, "message": str(exc)}, status=502)
    return JsonResponse({"sum": result["result"]})


@csrf_exempt  # a JSON API for scripts; a browser form would keep the CSRF check
@require_POST
def start_task(request: HttpRequest) -> JsonResponse:
    """Send any command; the caller polls ``/tasks/<id>/``."""
    try:
        body = json.loads(request.body or b"{}")
        command = body["command"]
    except (ValueError, KeyError, TypeError):
        return JsonResponse(
            {"error": "bad request", "message": 'send {"command": ..., "args": ...}'}, status=400
        )
    task = execute.delay(command, body.get("args"), pool=body.get("pool"))
    return JsonResponse({"id": task.id}, status=202)


@require_GET
def task_status(request: HttpRequest, task_id: str) -> JsonResponse:
    """The task's state, and its result or error once it finished."""
    result: AsyncResult = execute.AsyncResult(task_id)
    payload: dict[str, Any] = {"id": task_id, "state": result.state}
    if result.successful():
        payload["result"] = result.result
    elif result.failed():
        exc = result.result
        payload["error"] = type(exc).__name__
        payload["message"] = str(exc)
    return JsonResponse(payload)


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """Liveness of the web process for the compose health check; touches no broker."""
    return JsonResponse({"status": "ok"})

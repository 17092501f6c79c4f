"""A small Flask app whose views call snakepit through Celery.

Run it (a Redis on localhost, or set CELERY_BROKER_URL / CELERY_RESULT_BACKEND)::

    cd examples/flask_app
    celery -A app:celery_app worker --loglevel INFO     # hosts the python pool
    flask --app app run                                 # http://127.0.0.1:5000/add?a=5&b=3

Views:
    GET  /add?a=5&b=3         waits for the result: {"sum": 8}
    POST /tasks               {"command": "sleep", "args": {"seconds": 2}} -> 202 {"id": ...}
    GET  /tasks/<id>          {"state": "SUCCESS", "result": {...}} or the error's class and message
    GET  /progress            a live progress bar fed by Server-Sent Events (see progress.py)
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from flask import Flask, jsonify, request

from snakepit_celery import SnakepitError, execute, install

celery_app = Celery(
    "flask_app",
    broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/1"),
)
install(celery_app)  # the worker of this app hosts the pools; .delay() routes to them

app = Flask(__name__)
app.extensions["celery"] = celery_app

from progress import bp as progress_bp  # noqa: E402  (the live progress page, SSE)

app.register_blueprint(progress_bp)


@app.get("/add")
def add() -> Any:
    a = request.args.get("a", 0, type=int)
    b = request.args.get("b", 0, type=int)
    try:
        result = execute.delay("compute", {"operation": "add", "a": a, "b": b}).get(timeout=10)
    except SnakepitError as exc:
        return jsonify(error=type(exc).__name__, message=str(exc)), 502
    return jsonify(sum=result["result"])


@app.post("/tasks")
def start_task() -> Any:
    body = request.get_json(force=True)
    task = execute.delay(body["command"], body.get("args"), pool=body.get("pool"))
    return jsonify(id=task.id), 202


@app.get("/tasks/<task_id>")
def task_status(task_id: str) -> Any:
    task = celery_app.AsyncResult(task_id)
    if task.failed():
        exc = task.result
        return jsonify(state=task.state, error=type(exc).__name__, message=str(exc))
    return jsonify(state=task.state, result=task.result if task.successful() else None)

"""The Flask example's progress page in a real headless Chromium, fed by a real stream.

Started the way the example's docstring says: ``celery -A app:celery_app worker``
and ``flask --app app run``, both in ``examples/flask_app`` (on this run's
private Redis). Chromium (Debian's; ``make browser`` installs it) is driven
through the DevTools protocol over ``--remote-debugging-pipe`` (``devtools.py``),
so no WebDriver or websocket library is needed. The test waits until the page says
the stream ended, writes a screenshot to ``artifacts/progress_page.png`` and
checks that the bar reached 100%.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from devtools import free_port, watch_progress_page

from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.integration.workerproc import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flask_app"
ARTIFACTS = ROOT / "artifacts"


@pytest.fixture
def example_site(redis_server: EmbeddedRedis, redis_url: str) -> Iterator[str]:
    """The example's worker and web server, started as its docstring says; the site's URL."""
    env = {"CELERY_BROKER_URL": redis_url, "CELERY_RESULT_BACKEND": redis_url, "SNAKEPIT_POOL_SIZE": "1"}
    hostname = f"progress-e2e@{socket.gethostname()}"
    worker_argv = ["-A", "app:celery_app", "worker", "-n", hostname, "--loglevel", "WARNING"]
    port = free_port()
    web_argv = [sys.executable, "-m", "flask", "--app", "app", "run", "--port", str(port), "--no-reload"]
    caller = Celery(broker=redis_url, set_as_current=False)
    with WorkerProcess(worker_argv, env=env, cwd=str(EXAMPLE)) as worker:
        worker.wait_ready(caller, hostname)
        web = subprocess.Popen(
            web_argv,
            cwd=str(EXAMPLE),
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                assert web.poll() is None, "the Flask app exited"
                assert time.monotonic() < deadline, "the Flask app did not answer"
                try:
                    with urllib.request.urlopen(url + "/progress", timeout=1) as response:
                        if response.status == 200:
                            break
                except OSError:
                    time.sleep(0.05)
            yield url
        finally:
            web.terminate()
            web.wait(10)
            caller.close()


def test_progress_page_reaches_100_percent_in_chromium(chromium: str, example_site: str) -> None:
    url = example_site + "/progress?rows=20000&chunk=1000&delay=0.05"
    page = watch_progress_page(chromium, url, ARTIFACTS / "progress_page.png")
    assert page.outcome == "ok"
    assert page.percent == "100%" and page.width == "100%"
    assert page.rows == "20000 / 20000 rows"
    # The bar moved through intermediate values as chunks arrived, not straight to the end.
    assert len(page.percents) > 3, page.percents

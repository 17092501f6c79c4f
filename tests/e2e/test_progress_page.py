"""The Flask example's progress page in a real headless Chromium, fed by a real stream.

Started the way the example's docstring says: ``celery -A app:celery_app worker``
and ``flask --app app run``, both in ``examples/flask_app`` (on this run's
private Redis). Chromium (Debian's; ``make browser`` installs it) is driven
through the DevTools protocol over ``--remote-debugging-pipe``, so no
WebDriver or websocket library is needed. The test waits until the page says
the stream ended, writes a screenshot to ``artifacts/progress_page.png`` and
checks that the bar reached 100%.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.workerproc import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flask_app"
ARTIFACTS = ROOT / "artifacts"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=900,480",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe (fds 3 and 4)."""

    def __init__(self, chromium: str, user_data_dir: str) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds() -> None:  # pragma: no cover - runs in the child
            # Move both ends out of the way first, so neither is clobbered by the other's dup2.
            read_end = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 100)
            write_end = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 100)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        argv = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={user_data_dir}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=wire_fds,
            start_new_session=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 20
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for raw in self._messages(deadline):
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise AssertionError(f"{method}: {reply['error']}")
                    return reply.get("result", {})  # type: ignore[no-any-return]

    def _messages(self, deadline: float) -> list[bytes]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            assert left > 0, "Chromium did not answer in time"
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                data = os.read(self._from_browser, 1 << 20)
                assert data, f"Chromium closed its pipe (exit {self.process.poll()})"
                self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\0")
        return complete

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result["result"].get("value")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # its renderer and zygote too
        self.process.wait(10)
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def chromium() -> str:
    found = shutil.which("chromium")
    if not found:
        reason = "Debian's chromium is not installed (make browser installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    return str(found)


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
    with tempfile.TemporaryDirectory() as profile:
        browser = DevTools(chromium, profile)
        try:
            target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            browser.session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            browser.call(
                "Page.navigate", {"url": example_site + "/progress?rows=20000&chunk=1000&delay=0.05"}
            )
            percents: list[str] = []
            deadline = time.monotonic() + 60
            while browser.evaluate("document.getElementById('status')?.dataset.outcome || ''") == "":
                assert time.monotonic() < deadline, f"the page never finished; it showed {percents[-5:]}"
                percent = browser.evaluate("document.getElementById('percent')?.textContent")
                if percent and (not percents or percents[-1] != percent):
                    percents.append(percent)
            drawn = (
                "Math.round(100 * document.getElementById('fill').getBoundingClientRect().width"
                " / document.querySelector('.bar').getBoundingClientRect().width)"
            )
            while (shown := browser.evaluate(drawn)) != 100:
                assert time.monotonic() < deadline, f"the bar is drawn at {shown}%"
            ARTIFACTS.mkdir(exist_ok=True)
            shot = browser.call("Page.captureScreenshot", {"format": "png"})["data"]
            (ARTIFACTS / "progress_page.png").write_bytes(base64.b64decode(shot))
            outcome = browser.evaluate("document.getElementById('status').dataset.outcome")
            percent = browser.evaluate("document.getElementById('percent').textContent")
            width = browser.evaluate("document.getElementById('fill').style.width")
            rows = browser.evaluate("document.getElementById('rows').textContent")
        finally:
            browser.close()
    assert outcome == "ok"
    assert percent == "100%" and width == "100%"
    assert rows == "20000 / 20000 rows"
    # The bar moved through intermediate values as chunks arrived, not straight to the end.
    assert len(percents) > 3, percents

"""A minimal Chromium driver for the progress-page tests: the DevTools protocol over a pipe.

Chromium (Debian's; ``make browser`` installs it) is started headless with
``--remote-debugging-pipe``, so no WebDriver or websocket library is needed.
Shared by the Flask page's test and the FastAPI page's.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass
class ProgressPage:
    """What a progress page showed once its stream ended."""

    outcome: str
    percent: str
    width: str
    rows: str
    #: Each new percentage the page showed on its way (the bar moved through them).
    percents: list[str]


def watch_progress_page(chromium: str, url: str, screenshot: Path, timeout: float = 60) -> ProgressPage:
    """Open a progress page (the Flask or FastAPI example's), wait until it says the stream
    ended and its bar is drawn to the end, save a screenshot; what it showed."""
    with tempfile.TemporaryDirectory() as profile:
        browser = DevTools(chromium, profile)
        try:
            target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            browser.session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            browser.call("Page.navigate", {"url": url})
            percents: list[str] = []
            deadline = time.monotonic() + timeout
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
            screenshot.parent.mkdir(exist_ok=True)
            shot = browser.call("Page.captureScreenshot", {"format": "png"})["data"]
            screenshot.write_bytes(base64.b64decode(shot))
            return ProgressPage(
                outcome=browser.evaluate("document.getElementById('status').dataset.outcome"),
                percent=browser.evaluate("document.getElementById('percent').textContent"),
                width=browser.evaluate("document.getElementById('fill').style.width"),
                rows=browser.evaluate("document.getElementById('rows').textContent"),
                percents=percents,
            )
        finally:
            browser.close()

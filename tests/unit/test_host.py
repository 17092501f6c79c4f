"""PoolHost: the private run directory, kill -9 of the host, and the sweep of earlier runs."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from testprocs import LONG_LIVED

from snakepit_celery.config import SnakepitConfig
from snakepit_celery.engine.host import OWNER_FILE, PoolHost, host_directory
from snakepit_celery.engine.runrecord import create_time, record_process
from snakepit_celery.errors import ConfigurationError, PoolNotFound
from tests.handlers import REPO_ROOT, pid_alive, pool_config, wait_until


@pytest.fixture
def base() -> Iterator[Path]:
    import shutil

    path = Path(tempfile.mkdtemp(prefix="sph-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def config(base: Path, **pool_overrides: object) -> SnakepitConfig:
    return SnakepitConfig(
        pools=(
            pool_config(name="main", size=2, **pool_overrides),
            pool_config(name="other", size=1, start_method="preload"),
        ),
        run_dir=str(base),
    )


def test_a_run_dir_too_deep_for_socket_paths_is_refused_by_name(base: Path) -> None:
    deep = base / ("d" * 60)
    with pytest.raises(ConfigurationError, match=r"run_dir: .*too deep.*SNAKEPIT_RUN_DIR") as refused:
        PoolHost(config(deep), host_key="w1@example")
    assert str(deep) in str(refused.value)
    assert not deep.exists()  # refused before anything was made or started
    # The deepest base that still fits works (the sockets fall back on short names).
    host_dir = host_directory(config(base), "w1@example")
    room = 107 - len("/12345678.1234.123456.sock") - len(f"/{host_dir.name}/{'0' * 12}")
    fits = base / ("f" * (room - len(str(base)) - 1))
    with PoolHost(config(fits), host_key="w1@example") as host:
        host.start()
        assert host.pool("main").execute("ping")["status"] == "ok"


def test_host_runs_its_pools_in_a_private_run_dir(base: Path) -> None:
    with PoolHost(config(base), host_key="celery@unit test") as host:
        assert host.run_dir.parent == host_directory(host.config, "celery@unit test")
        for path in (host.run_dir, host.host_dir):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700
        sockets = sorted(p.name for p in host.run_dir.glob("*.sock"))
        assert len(sockets) == 3 and all(s.startswith(("main.", "other.")) for s in sockets)
        assert host.pool() is host.pools["main"] and host.pool("other").name == "other"
        with pytest.raises(PoolNotFound) as caught:
            host.pool("nope")
        assert "'nope'" in str(caught.value) and "main, other" in str(caught.value)
        host.pool().execute("ping")
        host.pool("other").execute("ping")
        stats = host.stats()
        assert stats["size"] == 3 and stats["workers"] == 3 and stats["requests"] == 2
        assert set(stats["pools"]) == {"main", "other"} and stats["run_id"] == host.run_id
        assert host.drain(5.0) is True
        run_dir = host.run_dir
    assert not run_dir.exists()


HOST_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from snakepit_celery.config import SnakepitConfig
    from snakepit_celery.engine.host import PoolHost
    from tests.handlers import pool_config

    method, base = sys.argv[1], sys.argv[2]
    host = PoolHost(
        SnakepitConfig(pools=(pool_config(name="p", size=3, start_method=method),), run_dir=base),
        host_key="killed-host",
    )
    host.start()
    pids = [b["pid"] for b in host.pool().stats()["bridges"]]
    zygote = host.pool()._zygote
    print(json.dumps({"pids": pids, "zygote": zygote.pid if zygote else None,
                      "run_dir": str(host.run_dir)}), flush=True)
    sys.stdin.read()
    """
)


@pytest.mark.parametrize("start_method", ["spawn", "preload"])
def test_kill_9_of_the_host_leaves_no_bridge_alive(base: Path, start_method: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    host = subprocess.Popen(
        [sys.executable, "-c", HOST_SCRIPT, start_method, str(base)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert host.stdout is not None
        line = host.stdout.readline()
        assert line, "the host process did not start its pool"
        started = json.loads(line)
        pids: list[int] = started["pids"] + ([started["zygote"]] if started["zygote"] else [])
        assert len(pids) == (4 if start_method == "preload" else 3)
        assert all(pid_alive(pid) for pid in pids)
        host.send_signal(signal.SIGKILL)
        host.wait(5.0)
        wait_until(lambda: not any(pid_alive(pid) for pid in pids), 5.0, "every bridge is gone")
    finally:
        if host.poll() is None:
            host.kill()
        host.wait()
        for pipe in (host.stdin, host.stdout):
            if pipe is not None:
                pipe.close()
    # A new run of the same host key removes what the killed one left.
    left = Path(started["run_dir"])
    assert left.exists()
    with PoolHost(
        SnakepitConfig(pools=(pool_config(name="p", size=1),), run_dir=str(base)), host_key="killed-host"
    ) as again:
        assert not left.exists() and again.swept == []


def _sleeper(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *args])


def test_sweep_kills_an_earlier_runs_bridges_and_nothing_else(base: Path) -> None:
    cfg = config(base)
    host_dir = host_directory(cfg, "sweeper")
    old_run = host_dir / "0ldrun000000"
    old_run.mkdir(parents=True, mode=0o700)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (old_run / OWNER_FILE).write_text(
        json.dumps({"pid": dead.pid, "create_time": 1.0, "run_id": "0ldrun000000"})
    )
    # A real bridge of the earlier run, still running (its "worker", this test process, lives on).
    leftover = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snakepit_bridge",
            "--socket",
            str(old_run / "b.sock"),
            "--run-id",
            "0ldrun000000",
            "--parent-pid",
            str(os.getpid()),
        ],
        stderr=subprocess.DEVNULL,
    )
    # Decoys: a pid reused by another process (creation time differs) and a process
    # with a matching record but without the run id on its command line.
    reused = _sleeper("0ldrun000000")
    stranger = _sleeper()
    # A run whose owner is alive (another process with the same host key) is not touched.
    live_run = host_dir / "liverun00000"
    live_run.mkdir(mode=0o700)
    me = os.getpid()
    (live_run / OWNER_FILE).write_text(json.dumps({"pid": me, "create_time": create_time(me), "run_id": "x"}))
    live_sleeper = _sleeper("liverun00000")
    try:
        wait_until(lambda: (old_run / "b.sock").exists(), 20.0, "the leftover bridge serves")
        record_process(old_run, leftover.pid, run_id="0ldrun000000", kind="bridge")
        record_process(old_run, stranger.pid, run_id="0ldrun000000", kind="bridge")
        (old_run / "procs" / str(reused.pid)).write_text(
            json.dumps(
                {"pid": reused.pid, "create_time": 12345.0, "run_id": "0ldrun000000", "kind": "bridge"}
            )
        )
        record_process(live_run, live_sleeper.pid, run_id="liverun00000", kind="bridge")

        with PoolHost(cfg, host_key="sweeper") as host:
            assert host.swept == [leftover.pid]
            assert not pid_alive(leftover.pid)  # (the sweep already reaped it: it is our child here)
            assert not old_run.exists() and live_run.exists()
            assert reused.poll() is None and stranger.poll() is None and live_sleeper.poll() is None
            assert host.pool().execute("ping")["status"] == "ok"
    finally:
        for proc in (leftover, reused, stranger, live_sleeper):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert [c for c in psutil.Process().children() if c.pid not in LONG_LIVED] == []


@pytest.fixture
def default_base(monkeypatch: pytest.MonkeyPatch, base: Path) -> Path:
    """The default base (no run_dir) as it is with TMPDIR=base: never the shared /tmp one.

    ``base``, not ``tmp_path``: a socket path under pytest's deep one is too long.
    """
    monkeypatch.setenv("TMPDIR", str(base))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    return base / f"snakepit-{os.getuid()}"


def default_config() -> SnakepitConfig:
    return SnakepitConfig(pools=(pool_config(name="main", size=1),))


def test_the_default_base_is_made_private_and_used(default_base: Path) -> None:
    with PoolHost(default_config(), host_key="default base") as host:
        assert host.host_dir.parent == default_base
        assert stat.S_IMODE(default_base.stat().st_mode) == 0o700
        assert host.pool().execute("ping")["status"] == "ok"


@pytest.mark.parametrize("how", ["open", "symlink", "file"])
def test_a_default_base_not_safely_ours_is_refused_by_path(default_base: Path, how: str) -> None:
    if how == "open":
        default_base.mkdir()
        os.chmod(default_base, 0o777)  # as another user could have left it for us
    elif how == "symlink":
        target = default_base.with_name("elsewhere")
        target.mkdir(mode=0o700)
        default_base.symlink_to(target)
    else:
        default_base.write_text("")
    host = PoolHost(default_config(), host_key="refused")
    try:
        with pytest.raises(ConfigurationError) as caught:
            host.start()
        assert not host.run_dir.exists() and host.pool().stats()["workers"] == 0
    finally:
        host.close()
    message = str(caught.value)
    assert str(default_base) in message and "run_dir" in message
    assert {"open": "mode 0777", "symlink": "a symlink", "file": "not a directory"}[how] in message


@pytest.mark.skipif(os.getuid() != 0, reason="only root can make a directory another user owns")
def test_a_default_base_of_another_user_is_refused(default_base: Path) -> None:
    default_base.mkdir(mode=0o700)
    os.chown(default_base, 65534, 65534)
    host = PoolHost(default_config(), host_key="refused")
    try:
        with pytest.raises(ConfigurationError) as caught:
            host.start()
        assert not any(default_base.iterdir())
    finally:
        host.close()
    assert str(default_base) in str(caught.value) and "uid 65534" in str(caught.value)

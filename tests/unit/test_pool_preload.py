"""The preload start method: a zygote that imported everything forks the bridges."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from snakepit_celery.errors import BridgeStartError, ConfigurationError
from tests.handlers import PoolFactory, pid_alive, pids_serving, pool_config, wait_until


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    factory = PoolFactory()
    yield factory
    factory.close()


def zygote_of(pool: object) -> psutil.Process:
    zygote = pool._zygote  # type: ignore[attr-defined]
    assert zygote is not None and zygote.pid is not None
    return psutil.Process(zygote.pid)


def test_bridges_are_forked_from_one_zygote(make_pool: PoolFactory, tmp_path: Path) -> None:
    pool = make_pool(size=3, start_method="preload")
    zygote = zygote_of(pool)
    assert "snakepit_bridge.zygote" in " ".join(zygote.cmdline())
    pids = {b["pid"] for b in pool.stats()["bridges"]}
    assert {c.pid for c in zygote.children()} == pids
    # NOTE: a gRPC object would have started threads; the zygote has only its main thread.
    assert zygote.num_threads() == 1
    assert pids_serving(pool, 3, tmp_path) == pids
    assert pool.execute("echo", {"b": b"\x00"})["echoed"] == {"b": b"\x00"}
    # The run id is on every bridge's command line (inherited from the zygote's).
    for pid in pids:
        assert pool.run_id in psutil.Process(pid).cmdline()


def test_a_killed_preloaded_bridge_is_forked_again(make_pool: PoolFactory) -> None:
    pool = make_pool(size=2, start_method="preload")
    zygote = zygote_of(pool)
    victim = pool.stats()["bridges"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: victim not in {b["pid"] for b in pool.stats()["bridges"]} and pool.stats()["available"] == 2,
        5.0,
        "replaced",
    )
    assert {c.pid for c in zygote.children()} == {b["pid"] for b in pool.stats()["bridges"]}
    assert zygote.num_threads() == 1


def test_the_pool_survives_the_death_of_its_zygote(make_pool: PoolFactory) -> None:
    pool = make_pool(size=2, start_method="preload")
    old_zygote = zygote_of(pool)
    old = {b["pid"] for b in pool.stats()["bridges"]}
    old_zygote.kill()
    # Its children die with it (parent-death signal) and come back from a new zygote.
    wait_until(lambda: not any(pid_alive(p) for p in old), 5.0, "the old bridges die with their zygote")
    wait_until(
        lambda: pool.stats()["available"] == 2 and not old & {b["pid"] for b in pool.stats()["bridges"]},
        10.0,
        "two new bridges",
    )
    assert zygote_of(pool).pid != old_zygote.pid
    assert pool.execute("ping")["status"] == "ok"


@pytest.mark.parametrize("start_method", ["spawn", "preload"])
def test_a_handler_that_cannot_load_is_a_clear_start_error(make_pool: PoolFactory, start_method: str) -> None:
    with pytest.raises(BridgeStartError) as caught:
        make_pool(size=2, start_method=start_method, handler="tests.handlers:NoSuchHandler")
    assert "exit code 2" in str(caught.value) or "exited" in str(caught.value)


def test_preload_needs_an_adapter_that_supports_it() -> None:
    from snakepit_celery.engine.adapters import resolve_adapter
    from snakepit_celery.engine.pool import BridgePool

    assert resolve_adapter("python").supports_preload
    with pytest.raises(ConfigurationError) as typo:
        resolve_adapter("pyhton")
    assert "did you mean 'python'" in str(typo.value)
    with pytest.raises(ConfigurationError) as missing:
        resolve_adapter("tests.handlers:Nothing")
    assert "Nothing" in str(missing.value)
    config = pool_config(start_method="preload", adapter="tests.handlers:NoPreloadAdapter")
    with pytest.raises(ConfigurationError) as caught:
        BridgePool(config, run_dir=Path("/nonexistent"), run_id="x")
    assert "start_method" in str(caught.value) and "spawn" in str(caught.value)

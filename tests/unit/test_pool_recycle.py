"""Recycling by max_requests and memory, and restarts on request, without failing queued work."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from snakepit_celery.errors import InfrastructureError
from tests.handlers import PoolFactory, pid_alive, wait_until


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    factory = PoolFactory()
    yield factory
    factory.close()


def test_max_requests_recycles_after_exactly_n_calls(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1, max_requests=3)
    pids = [pool.execute("ping")["pid"] for _ in range(9)]
    assert pids[0] == pids[1] == pids[2]
    assert pids[3] == pids[4] == pids[5] != pids[0]
    assert pids[6] == pids[7] == pids[8] not in (pids[0], pids[3])
    wait_until(lambda: not pid_alive(pids[0]) and not pid_alive(pids[3]), 5.0, "recycled bridges exit")
    stats = pool.stats()
    assert stats["restarts"] == 3 and stats["requests"] == 9 and stats["errors"] == 0


def test_recycling_under_load_fails_no_queued_call(make_pool: PoolFactory) -> None:
    pool = make_pool(size=2, max_requests=4, queue_timeout=60.0)
    errors: list[BaseException] = []
    served: collections.Counter[int] = collections.Counter()  # calls per bridge pid
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(10):
            try:
                pid = pool.execute("ping")["pid"]
                with lock:
                    served[pid] += 1
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60.0)
    assert errors == []
    stats = pool.stats()
    assert stats["requests"] == 80 and stats["errors"] == 0
    # The bridge of the last call is replaced after that call returned: counted soon after.
    wait_until(lambda: pool.stats()["restarts"] >= 20, 10.0, "the last bridge's replacement")
    assert pool.stats()["restarts"] == 20
    # Every bridge served exactly 4 calls (80 / 4 = 20 bridges). Counted per pid, a pid
    # the kernel reused for a later bridge (pid_max wraps on a busy machine) serves 8.
    assert all(n % 4 == 0 for n in served.values()), served
    assert sum(n // 4 for n in served.values()) == 20, served


def test_memory_ceiling_recycles_between_calls(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1, max_memory_mb=150, queue_timeout=60.0)
    first = pool.execute("allocate", {"mb": 10})["pid"]
    assert pool.execute("info")["pid"] == first  # under the ceiling: kept
    results: list[Any] = []

    def queued() -> None:
        results.append(pool.execute("info")["pid"])

    # The call that passes the ceiling completes; the calls queued behind it run on the successor.
    holder = threading.Thread(target=lambda: results.append(pool.execute("allocate", {"mb": 200})["pid"]))
    holder.start()
    waiters = [threading.Thread(target=queued) for _ in range(3)]
    for thread in waiters:
        thread.start()
    for thread in [holder, *waiters]:
        thread.join(30.0)
    assert len(results) == 4 and results.count(first) >= 1
    assert pool.execute("info")["pid"] != first
    wait_until(lambda: not pid_alive(first), 5.0, "the big bridge exits")
    stats = pool.stats()
    assert stats["errors"] == 0 and stats["restarts"] == 1
    assert stats["bridges"][0]["rss_bytes"] < 150 * 1024 * 1024


def test_restart_bridge_one_or_all(make_pool: PoolFactory) -> None:
    pool = make_pool(size=2)
    old = sorted(b["pid"] for b in pool.stats()["bridges"])
    new_one = pool.restart_bridge(old[0])
    assert len(new_one) == 1 and new_one[0] not in old
    now = {b["pid"] for b in pool.stats()["bridges"]}
    assert now == {old[1], new_one[0]}
    new_all = pool.restart_bridge()
    assert len(new_all) == 2 and not set(new_all) & now
    assert {b["pid"] for b in pool.stats()["bridges"]} == set(new_all)
    with pytest.raises(InfrastructureError) as caught:
        pool.restart_bridge(1)
    assert "pid 1" in str(caught.value)
    assert pool.stats()["restarts"] == 3


def test_restart_of_a_busy_bridge_waits_for_its_call(make_pool: PoolFactory) -> None:
    pool = make_pool(size=1)
    old = pool.execute("info")["pid"]
    result: list[Any] = []
    caller = threading.Thread(target=lambda: result.append(pool.execute("sleep", {"seconds": 0.5})))
    caller.start()
    wait_until(lambda: pool.stats()["busy"] == 1, 5.0, "busy")
    new = pool.restart_bridge()
    caller.join(10.0)
    assert result and result[0]["cancelled"] is False
    assert new != [old] and pool.execute("info")["pid"] == new[0]

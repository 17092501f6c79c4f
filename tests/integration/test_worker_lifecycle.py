"""A worker's life: start, routing, warm and cold ends, refusals. One worker per test (they get killed)."""

from __future__ import annotations

import signal
import time

import psutil
import redis
from itworkers import WorkerFactory


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Poll until none of ``pids`` is alive (zombies count as gone); those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def test_sigkill_of_the_worker_leaves_no_bridge(worker_factory: WorkerFactory) -> None:
    worker = worker_factory({"python": {"size": 2}})
    pids = worker.bridge_pids()
    assert len(pids) == 2
    worker.process.signal(signal.SIGKILL)
    assert worker.process.wait(10) == -signal.SIGKILL
    assert _wait_gone(pids) == []


def test_sigterm_finishes_running_calls_first(worker_factory: WorkerFactory) -> None:
    worker = worker_factory({"python": {"size": 2}})
    pids = worker.bridge_pids()
    running = [worker.execute.delay("sleep", {"seconds": 1.5}) for _ in range(2)]
    worker.wait_for(lambda s: s["busy"] == 2)
    worker.process.signal(signal.SIGTERM)
    results = [r.get(timeout=30) for r in running]
    assert all(r["cancelled"] is False and r["slept"] >= 1.5 for r in results)
    assert worker.process.wait(30) == 0, worker.process.log()[-2000:]
    assert _wait_gone(pids) == []


def test_a_worker_never_receives_another_pools_work(worker_factory: WorkerFactory) -> None:
    alpha = worker_factory({"alpha": {"size": 1}}, name="alpha")
    # Same broker and prefix: the beta worker is the only one consuming beta's queue. The
    # caller's config names beta: no worker hosts it yet, and that is no error when sending.
    caller = alpha.caller_app(["alpha", "beta"])
    beta_work = caller.tasks["snakepit.execute"].delay("ping", {}, pool="beta")
    alpha_work = alpha.execute.delay("ping", {}, pool="alpha")
    assert alpha_work.get(timeout=10)["pid"] in alpha.bridge_pids()
    # alpha has consumed what was sent after beta's message; beta's is still waiting in its queue.
    client = redis.Redis.from_url(alpha.broker)
    assert client.llen(alpha.config.queue_name("beta")) == 1
    assert beta_work.state == "PENDING"
    beta = worker_factory({"beta": {"size": 1}}, name="beta", broker=alpha.broker, prefix=alpha.prefix)
    assert beta_work.get(timeout=20)["pid"] in beta.bridge_pids()
    assert client.llen(alpha.config.queue_name("beta")) == 0
    client.close()
    caller.close()


def test_prefork_is_refused_with_what_to_use_instead(worker_factory: WorkerFactory) -> None:
    worker = worker_factory(args=("--pool", "processes"), wait=False)
    assert worker.process.wait(60) not in (None, 0)
    log = worker.process.log()
    assert "worker_pool" in log and "--pool threads" in log

"""One worker, three languages: ``worker_configs/polyglot.toml`` end to end.

A real worker subprocess runs that very file (Python, Node.js and Ruby pools),
and the caller picks a language with ``pool=``: the same ``compute`` gives the
same answer from each, ``info`` and ``ping`` prove which runtime answered, and
a chord fans its headers out to all three languages and sums them in one
callback. The worker is shared by the module (no test here kills it); its
bridges are checked for orphans when the module ends.
"""

from __future__ import annotations

import gc
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import chord
from itworkers import Worker, WorkerFactory
from testprocs import missing_service

from snakepit_celery import CommandError, InvalidArguments
from snakepit_celery.config import SnakepitConfig
from snakepit_celery.engine.adapters import resolve_adapter
from snakepit_celery.errors import ConfigurationError

CONFIG = Path(__file__).resolve().parents[2] / "worker_configs" / "polyglot.toml"
LANGUAGES = ("python", "node", "ruby")
#: The same operations, sent to every language; each must give exactly this (value and type).
COMPUTE = [
    ({"operation": "add", "a": 5, "b": 3}, 8),
    ({"operation": "subtract", "a": 5, "b": 8}, -3),
    ({"operation": "multiply", "a": 6, "b": 7}, 42),
    ({"operation": "divide", "a": 7, "b": 2}, 3.5),
    ({"operation": "power", "a": 2, "b": 10}, 1024),
    ({"operation": "sqrt", "a": 81}, 9),
    ({"operation": "add", "a": 0.1, "b": 0.2}, 0.1 + 0.2),
    ({"operation": "add", "a": 2**53, "b": 1}, 2**53 + 1),
]


def _require_runtimes(config: SnakepitConfig) -> None:
    """Skip (fail under CI=true) when Node.js or Ruby is not installed, naming what to run."""
    for pool in config.pools:
        try:
            argv = resolve_adapter(pool.adapter).command(pool)
        except ConfigurationError as exc:
            missing_service(str(exc))
        if pool.adapter == "ruby":
            probe = subprocess.run(
                [argv[0], "-e", "require 'grpc'; require 'google/protobuf'"], capture_output=True, timeout=60
            )
            if probe.returncode != 0:
                missing_service("Ruby cannot load grpc/google-protobuf: run `make ruby-bridge`")


@pytest.fixture(scope="module")
def worker(module_worker_factory: WorkerFactory) -> Iterator[Worker]:
    config = SnakepitConfig.from_file(CONFIG)
    assert [(p.name, p.adapter) for p in config.pools] == [(lang, lang) for lang in LANGUAGES]
    _require_runtimes(config)
    # SNAKEPIT_CONFIG points the worker (and the caller's routing) at the file itself.
    yield module_worker_factory(name="polyglot", env={"SNAKEPIT_CONFIG": str(CONFIG)})
    # NOTE: results caught in reference cycles (a raised error's traceback holds its
    # AsyncResult) unsubscribe from the result backend when collected; collect them
    # now, while the test Redis still runs, not at interpreter exit.
    gc.collect()


def _pids(worker: Worker, pool: str) -> set[int]:
    return {int(b["pid"]) for b in worker.stats()["pools"][pool]["bridges"]}


def _requests(worker: Worker) -> dict[str, int]:
    pools = worker.stats()["pools"]
    return {lang: int(pools[lang]["requests"]) for lang in LANGUAGES}


def test_the_worker_hosts_a_pool_per_language(worker: Worker) -> None:
    pools = worker.stats()["pools"]
    assert sorted(pools) == sorted(LANGUAGES)
    for lang in LANGUAGES:
        assert pools[lang]["language"] == lang
        assert pools[lang]["workers"] == worker.config.pool(lang).size


@pytest.mark.parametrize("lang", LANGUAGES)
def test_info_reports_the_pools_language(worker: Worker, lang: str) -> None:
    info = worker.execute.delay("info", {}, pool=lang).get(timeout=20)
    assert info["language"] == lang
    assert info["pid"] in _pids(worker, lang)


def test_ping_with_pool_node_reaches_nodejs(worker: Worker) -> None:
    pong = worker.execute.delay("ping", {}, pool="node").get(timeout=20)
    assert pong["message"] == "pong"
    assert pong["pid"] in _pids(worker, "node")
    assert pong["pid"] not in _pids(worker, "python") | _pids(worker, "ruby")


def test_without_a_pool_the_default_python_pool_answers(worker: Worker) -> None:
    info = worker.execute.delay("info", {}).get(timeout=20)
    assert info["language"] == "python"


def test_the_same_compute_through_each_pool(worker: Worker) -> None:
    sent = [
        (lang, expected, worker.execute.delay("compute", args, pool=lang))
        for lang in LANGUAGES
        for args, expected in COMPUTE
    ]
    for lang, expected, result in sent:
        got = result.get(timeout=30)["result"]
        assert (got, type(got)) == (expected, type(expected)), lang


@pytest.mark.parametrize("lang", LANGUAGES)
def test_bad_input_is_a_clear_error_in_every_language(worker: Worker, lang: str) -> None:
    with pytest.raises(InvalidArguments, match="unknown operation"):
        worker.execute.delay("compute", {"operation": "modulo", "a": 1, "b": 2}, pool=lang).get(timeout=20)
    with pytest.raises(CommandError, match="division by zero") as excinfo:
        worker.execute.delay("compute", {"operation": "divide", "a": 1, "b": 0}, pool=lang).get(timeout=20)
    assert excinfo.value.remote_type in ("ZeroDivisionError", "RangeError")
    # The pool's bridges survived both.
    assert worker.execute.delay("ping", {}, pool=lang).get(timeout=20)["message"] == "pong"


def test_chord_with_headers_in_three_languages(worker: Worker) -> None:
    per_language = 10
    header: list[Any] = []
    products: list[int] = []
    for n, lang in enumerate(LANGUAGES):
        for i in range(per_language):
            a, b = 100 * n + i, i
            products.append(a * b)
            header.append(worker.execute.s("compute", {"operation": "multiply", "a": a, "b": b}, pool=lang))
    before = _requests(worker)
    result = chord(header)(worker.app.tasks["itest.total"].s())
    assert result.get(timeout=60) == sum(products)
    # The headers' own results, in order. Collecting them also settles every header
    # result the caller's backend still waits on (a chord's caller otherwise keeps
    # them subscribed until the app is collected, possibly after the test Redis is gone).
    assert [r["result"] for r in result.parent.get(timeout=30)] == products
    after = _requests(worker)
    # Each language ran exactly its share of the headers.
    assert {lang: after[lang] - before[lang] for lang in LANGUAGES} == dict.fromkeys(LANGUAGES, per_language)

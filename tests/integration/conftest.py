"""Fixtures of the integration tests: worker factories, and the orphan check
that leaves module-scoped workers' process trees alone until their module ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest
from itworkers import SHARED_ROOTS, WorkerFactory, worker_factory  # noqa: F401  (a fixture)
from testprocs import assert_no_orphans

from snakepit_celery.embedded import EmbeddedRedis


@pytest.fixture(scope="module")
def module_worker_factory(
    tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis, request: pytest.FixtureRequest
) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(tmp_path_factory.mktemp("workers"), redis_server, request, shared=True)
    try:
        yield factory
    finally:
        factory.close()


def _under_shared_worker(proc: psutil.Process) -> bool:
    try:
        return proc.pid in SHARED_ROOTS or any(p.pid in SHARED_ROOTS for p in proc.parents())
    except psutil.Error:
        return False


@pytest.fixture(autouse=True)
def no_orphans(redis_server: EmbeddedRedis) -> Iterator[None]:
    """The root check, except for the process trees of module-scoped workers (checked at their end)."""
    yield
    assert_no_orphans(skip=_under_shared_worker)

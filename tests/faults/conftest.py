"""Fixtures of the fault suite: a worker factory (as the integration tests' own) and a run log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import scenarios  # noqa: F401  (puts tests/integration on sys.path first)
from itworkers import WorkerFactory

from snakepit_celery.embedded import EmbeddedRedis


@pytest.fixture
def worker_factory(
    tmp_path: Path, redis_server: EmbeddedRedis, request: pytest.FixtureRequest
) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(tmp_path, redis_server, request, shared=False)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def run_log(tmp_path: Path) -> Path:
    """The file the bridges' FaultHandler appends every run to."""
    return tmp_path / "runs.log"

"""Fixtures of the fault suite: the integration tests' worker factory, and a run log."""

from __future__ import annotations

from pathlib import Path

import pytest
import scenarios  # noqa: F401  (puts tests/integration on sys.path first)
from itworkers import worker_factory  # noqa: F401  (a fixture)


@pytest.fixture
def run_log(tmp_path: Path) -> Path:
    """The file the bridges' FaultHandler appends every run to."""
    return tmp_path / "runs.log"

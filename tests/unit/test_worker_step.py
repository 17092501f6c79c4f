"""The worker bootstep refuses what it cannot run, before any bridge or queue exists.

These build a real Celery ``WorkController`` (which applies the bootsteps'
constructors) without starting it, so nothing connects to a broker.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from celery import _state as celery_state

from snakepit_celery import ConfigurationError, install

# Celery warns when a worker is built as root (as CI runs); that is not what these test.
pytestmark = pytest.mark.filterwarnings("ignore::celery.exceptions.SecurityWarning")


@pytest.fixture(autouse=True)
def _joins_unblocked() -> Iterator[None]:
    """A WorkController built here marks the process as a worker (``.get()`` would then
    refuse, in a later test of this process); undo that after each test."""
    yield
    celery_state._set_task_join_will_block(False)


def _worker(app: Celery, pool: str = "threads") -> object:
    return app.Worker(pool=pool, concurrency=2, hostname="step-test@localhost", quiet=True)


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("accept_content", ["json", "pickle"], "accept_content"),
        ("result_accept_content", ["application/x-python-serialize"], "result_accept_content"),
        ("task_serializer", "pickle", "task_serializer"),
        ("result_serializer", "pickle", "result_serializer"),
    ],
)
def test_pickle_asked_for_by_the_app_is_refused_naming_the_setting(
    setting: str, value: object, named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root (CI), Celery itself refuses a pickle worker unless C_FORCE_ROOT is
    # set: set it, so that the check under test is ours (as for any user but root).
    monkeypatch.setenv("C_FORCE_ROOT", "1")
    app = Celery("step-test", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf[setting] = value
    install(app)
    with pytest.raises(ConfigurationError, match=f"^{named}: snakepit refuses pickle"):
        _worker(app)


def test_json_only_app_builds_a_worker() -> None:
    app = Celery("step-test", broker="memory://", backend="cache+memory://", set_as_current=False)
    install(app)
    worker = _worker(app)
    assert "snakepit" in {step.label for step in worker.blueprint.order if hasattr(step, "label")}


def test_prefork_pool_is_refused_with_the_pool_to_use() -> None:
    app = Celery("step-test", broker="memory://", backend="cache+memory://", set_as_current=False)
    install(app)
    with pytest.raises(ConfigurationError, match="--pool threads"):
        _worker(app, pool="processes")

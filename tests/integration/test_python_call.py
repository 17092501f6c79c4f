"""The generic Python call API through a real worker: allowed modules only, stored objects."""

from __future__ import annotations

import pytest
from itworkers import Worker, WorkerFactory

from snakepit_celery import InvalidArguments, python


@pytest.fixture(scope="module")
def worker(module_worker_factory: WorkerFactory) -> Worker:
    return module_worker_factory(
        {"python": {"size": 1, "allowed_modules": ["math", "fractions"]}}, name="pycall"
    )


def test_call_an_allowed_function(worker: Worker) -> None:
    assert python.call("math.gcd", [12, 18], app=worker.app).get(timeout=10) == 6
    assert python.call("math.hypot", [3, 4], app=worker.app).get(timeout=10) == 5.0


def test_a_module_not_allowed_names_the_setting(worker: Worker) -> None:
    with pytest.raises(
        InvalidArguments, match="module os is not allowed; add it to the pool's allowed_modules"
    ):
        python.call("os.getcwd", app=worker.app).get(timeout=10)


def test_store_call_methods_retrieve_release(worker: Worker) -> None:
    stored = python.call(
        "fractions.Fraction", [3, 4], session_id="pycall-1", store_as="f", app=worker.app
    ).get(timeout=10)
    assert stored["stored_as"] == "f"
    assert stored["type"] == "fractions.Fraction"
    ratio = python.call_method("f", "as_integer_ratio", session_id="pycall-1", app=worker.app).get(timeout=10)
    assert ratio == [3, 4]
    assert python.release("f", session_id="pycall-1", app=worker.app).get(timeout=10)["released"] is True
    with pytest.raises(InvalidArguments, match="f"):
        python.call_method("f", "as_integer_ratio", session_id="pycall-1", app=worker.app).get(timeout=10)


def test_store_as_needs_a_session() -> None:
    with pytest.raises(InvalidArguments, match="store_as needs a session_id"):
        python.call("math.sqrt", [4], store_as="x")

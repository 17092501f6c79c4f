"""The gRPC tuning of the worker and its bridges (snakepit_celery.engine.grpcenv).

gRPC reads GRPC_EXPERIMENTS once per process, so the worker-side checks run
in fresh interpreters; the bridge-side ones read a real bridge's environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from snakepit_celery.config import PoolConfig
from snakepit_celery.engine import grpcenv
from snakepit_celery.engine.adapters.python import PythonAdapter
from tests.handlers import PoolFactory

#: A name gRPC's core does not know: it logs "Unknown experiment: <name>" when it reads it.
_PROBE_NAME = "snakepit_probe_name"
#: Prints what tune_this_process() returned and the variable afterwards; the probe name
#: stands in for the default so that gRPC's log shows whether it read the value.
_PROBE = """
import os, sys
{before}
from snakepit_celery.engine import grpcenv
grpcenv.GRPC_EXPERIMENTS = "-{name}"
print(grpcenv.tune_this_process(), repr(os.environ.get("GRPC_EXPERIMENTS")))
import grpc
"""


def _probe(env_value: str | None, before: str = "") -> tuple[str, bool]:
    """(stdout, whether gRPC read the probe name) of a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if k != grpcenv.VARIABLE}
    if env_value is not None:
        env[grpcenv.VARIABLE] = env_value
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(before=before, name=_PROBE_NAME)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip(), f"Unknown experiment: {_PROBE_NAME}" in out.stderr


def test_the_worker_loads_grpc_with_the_default_and_restores_its_environment() -> None:
    # Read by gRPC, yet gone from os.environ: nothing the worker starts inherits it.
    assert _probe(None) == ("True None", True)


def test_a_value_the_user_set_is_kept_even_empty() -> None:
    assert _probe("-event_engine_dns") == ("False '-event_engine_dns'", False)
    assert _probe("") == ("False ''", False)


def test_too_late_once_grpc_is_imported() -> None:
    assert _probe(None, before="import grpc") == ("False None", False)


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(grpcenv.VARIABLE, raising=False)
    return monkeypatch


def test_python_bridges_get_the_default_and_keep_a_user_value(clean_environ: pytest.MonkeyPatch) -> None:
    adapter = PythonAdapter()
    assert adapter.environment(PoolConfig())[grpcenv.VARIABLE] == grpcenv.GRPC_EXPERIMENTS
    own = PoolConfig(env={grpcenv.VARIABLE: ""})
    assert adapter.environment(own)[grpcenv.VARIABLE] == ""
    clean_environ.setenv(grpcenv.VARIABLE, "-event_engine_client")
    assert adapter.environment(PoolConfig())[grpcenv.VARIABLE] == "-event_engine_client"


def test_a_running_python_bridge_has_the_setting(clean_environ: pytest.MonkeyPatch) -> None:
    factory = PoolFactory()
    try:
        pool = factory(size=1)
        pid = pool.execute("ping")["pid"]
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"{grpcenv.VARIABLE}={grpcenv.GRPC_EXPERIMENTS}".encode() in environ
    finally:
        factory.close()

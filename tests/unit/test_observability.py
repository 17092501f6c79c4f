"""Signals, log lines, Prometheus series and the stats summary, against a real PoolHost."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from snakepit_celery.config import SnakepitConfig
from snakepit_celery.engine.host import PoolHost
from snakepit_celery.errors import CommandError, UnknownCommand
from snakepit_celery.observability import signals
from snakepit_celery.observability.metrics import MAX_COMMAND_LABELS, PrometheusTelemetry
from snakepit_celery.observability.monitoring import WorkerTelemetry
from snakepit_celery.observability.stats import summarize
from tests.handlers import pool_config


class Received:
    """Connects to a signal for one test and keeps what it was sent."""

    def __init__(self, signal: Any) -> None:
        self.signal = signal
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        signal.connect(self.receive, weak=False)

    def receive(self, sender: Any = None, **kwargs: Any) -> None:
        kwargs.pop("signal", None)
        with self.lock:
            self.calls.append({"sender": sender, **kwargs})

    def close(self) -> None:
        self.signal.disconnect(self.receive)


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="spo-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, keyed by (sample name, sorted labels)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_real_host_sends_signals_logs_and_metrics_that_agree_with_its_stats(
    base: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = SnakepitConfig(pools=(pool_config(name="main", size=2),), run_dir=str(base), metrics_port=0)
    telemetry = WorkerTelemetry(config)
    started = Received(signals.bridge_initialized)
    finished = Received(signals.request_finished)
    caplog.set_level(logging.DEBUG, logger="snakepit_celery")
    try:
        with PoolHost(config, host_key="celery@observability", telemetry=telemetry) as host:
            telemetry.serve(host)
            assert telemetry.server is not None and telemetry.server.port > 0
            pool = host.pool()
            pids = sorted(b["pid"] for b in pool.stats()["bridges"])
            assert sorted(c["pid"] for c in started.calls) == pids
            assert all(c["sender"] == "main" and c["startup_time"] > 0 for c in started.calls)

            assert (
                pool.execute("compute", {"operation": "add", "a": 5, "b": 3}, request_id="t-1")["result"] == 8
            )
            with pytest.raises(CommandError):
                pool.execute("compute", {"operation": "divide", "a": 1, "b": 0}, request_id="t-2")
            with pytest.raises(UnknownCommand):
                pool.execute("no_such_command", {}, request_id="t-3", session_id="s-9")

            assert [(c["command"], c["outcome"], c["task_id"]) for c in finished.calls] == [
                ("compute", "ok", "t-1"),
                ("compute", "error", "t-2"),
                ("no_such_command", "error", "t-3"),
            ]
            assert finished.calls[2]["session_id"] == "s-9" and finished.calls[0]["session_id"] is None
            assert all(c["sender"] == "main" and c["duration"] > 0 for c in finished.calls)

            lines = [r for r in caplog.records if r.name == "snakepit_celery.requests"]
            assert [r.snakepit["task_id"] for r in lines] == ["t-1", "t-2", "t-3"]  # type: ignore[attr-defined]
            # A successful call is DEBUG, a failed one INFO or above.
            assert [r.levelno > logging.DEBUG for r in lines] == [
                r.snakepit["outcome"] != "ok" for r in lines
            ]  # type: ignore[attr-defined]
            assert "task_id=t-3 session_id=s-9" in lines[2].getMessage()
            assert "command=compute outcome=ok" in lines[0].getMessage()

            samples = scrape(telemetry.server.url)
            stats = pool.stats()
            assert (
                samples[
                    ("snakepit_requests_total", (("command", "compute"), ("outcome", "ok"), ("pool", "main")))
                ]
                == 1
            )
            assert (
                samples[
                    (
                        "snakepit_requests_total",
                        (("command", "compute"), ("outcome", "error"), ("pool", "main")),
                    )
                ]
                == 1
            )
            assert (
                samples[
                    ("snakepit_request_duration_seconds_count", (("command", "compute"), ("pool", "main")))
                ]
                == 2
            )
            assert samples[("snakepit_bridge_startup_seconds_count", (("pool", "main"),))] == 2
            assert samples[("snakepit_pool_requests_total", (("pool", "main"),))] == stats["requests"] == 3
            assert samples[("snakepit_pool_errors_total", (("pool", "main"),))] == stats["errors"]
            assert samples[("snakepit_pool_bridges_alive", (("pool", "main"),))] == 2
            assert samples[("snakepit_pool_size", (("pool", "main"),))] == 2
            assert samples[("snakepit_pool_rss_bytes", (("pool", "main"),))] > 0
            assert samples[("snakepit_bridge_restarts_total", (("pool", "main"),))] == 0
    finally:
        telemetry.close()
        started.close()
        finished.close()
    assert telemetry.server is None


def test_a_failing_receiver_never_reaches_the_call(base: Path) -> None:
    config = SnakepitConfig(pools=(pool_config(name="main", size=1),), run_dir=str(base))
    telemetry = WorkerTelemetry(config)
    assert telemetry.server is None and len(telemetry.sinks) == 1  # no metrics unless asked

    def broken(**kwargs: Any) -> None:
        raise ValueError("receiver bug")

    signals.request_finished.connect(broken, weak=False)
    try:
        with PoolHost(config, host_key="celery@broken-receiver", telemetry=telemetry) as host:
            telemetry.serve(host)
            assert telemetry.server is None
            assert host.pool().execute("ping")["status"] == "ok"
    finally:
        signals.request_finished.disconnect(broken)


def test_command_labels_are_capped_per_pool() -> None:
    from prometheus_client import CollectorRegistry

    telemetry = PrometheusTelemetry(CollectorRegistry())
    for i in range(MAX_COMMAND_LABELS + 5):
        telemetry.request_finished(
            pool="p", command=f"c{i}", duration=0.01, outcome="error", session_id=None, request_id=None
        )
    counted = telemetry.registry.get_sample_value(
        "snakepit_requests_total", {"pool": "p", "command": "other", "outcome": "error"}
    )
    assert counted == 5
    assert (
        telemetry.registry.get_sample_value(
            "snakepit_requests_total", {"pool": "p", "command": "c0", "outcome": "error"}
        )
        == 1
    )


def _pool(name: str, pids: list[int], **counters: int) -> dict[str, Any]:
    base = dict.fromkeys(
        (
            "workers",
            "available",
            "busy",
            "requests",
            "queued",
            "errors",
            "queue_timeouts",
            "pool_saturated",
            "restarts",
        ),
        0,
    )
    base.update(counters)
    return {
        "name": name,
        "size": len(pids),
        **base,
        "bridges": [
            {"pid": p, "state": "idle", "requests": 0, "rss_bytes": 1000, "sessions": 1} for p in pids
        ],
    }


def test_summary_adds_up_workers_and_pools() -> None:
    replies = {
        "b@host": {
            "run_id": "r2",
            "pools": {"python": _pool("python", [11, 12], workers=2, requests=5, errors=1)},
        },
        "a@host": {
            "run_id": "r1",
            "pools": {
                "python": _pool("python", [1], workers=1, requests=3, queue_timeouts=2, errors=2),
                "node": _pool("node", [2], workers=1, busy=1, pool_saturated=4, errors=4, restarts=1),
            },
        },
        "c@host": {"error": "no pools in this worker"},
    }
    stats = summarize(replies)
    assert list(stats["nodes"]) == ["a@host", "b@host"]
    # errors: failed on a bridge (1 + 2 + 4) plus refused (2 queue timeouts, 4 saturated)
    assert stats["workers"] == 4 and stats["requests"] == 8 and stats["errors"] == 13
    assert stats["queue_timeouts"] == 2 and stats["pool_saturated"] == 4 and stats["busy"] == 1
    assert stats["restarts"] == 1 and stats["sessions"] == 4 and stats["rss_bytes"] == 4000
    a = stats["nodes"]["a@host"]
    assert a["bridge_pids"] == [2, 1] and a["run_id"] == "r1" and a["errors"] == 12
    assert a["pools"]["node"]["errors"] == 8 and a["pools"]["node"]["bridge_errors"] == 4
    assert a["pools"]["python"]["sessions"] == 1 and a["pools"]["node"]["bridge_pids"] == [2]
    python = stats["pools"]["python"]
    assert python["nodes"] == ["a@host", "b@host"] and python["requests"] == 8 and python["size"] == 3
    assert summarize({})["workers"] == 0 and summarize({})["nodes"] == {}


def test_a_taken_metrics_port_is_logged_and_the_worker_goes_on(
    base: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = SnakepitConfig(
            pools=(pool_config(name="main", size=1),), run_dir=str(base), metrics_port=port
        )
        telemetry = WorkerTelemetry(config)
        host = PoolHost(config, host_key="celery@taken-port", telemetry=telemetry)  # never started
        telemetry.serve(host)
        assert telemetry.server is None and telemetry.host is host
        assert any(f"127.0.0.1:{port} could not start" in r.getMessage() for r in caplog.records)
        telemetry.close()


def test_metrics_settings_are_validated_by_name() -> None:
    from snakepit_celery.errors import ConfigurationError

    assert SnakepitConfig.from_env({"SNAKEPIT_METRICS_PORT": "9808"}).metrics_port == 9808
    assert SnakepitConfig.from_env({"SNAKEPIT_METRICS_ADDR": "0.0.0.0"}).metrics_addr == "0.0.0.0"
    assert SnakepitConfig.from_mapping({"metrics_port": 0}).metrics_port == 0
    for bad, field in (({"metrics_port": 70000}, "metrics_port"), ({"metrics_port": "80"}, "metrics_port")):
        with pytest.raises(ConfigurationError, match=field):
            SnakepitConfig.from_mapping(bad)
    with pytest.raises(ConfigurationError, match="SNAKEPIT_METRICS_PORT: 'http' is not a port number"):
        SnakepitConfig.from_env({"SNAKEPIT_METRICS_PORT": "http"})

"""The unknown-pool error (its message and suggestion), and sending with no Redis to ask."""

from __future__ import annotations

import pytest
from celery import Celery, chain, group

from snakepit_celery import PoolNotFound, SnakepitConfig, install
from snakepit_celery.config import PoolConfig
from snakepit_celery.integration.known_pools import check_pool, unknown_pool


def test_the_message_names_the_pool_suggests_the_closest_and_lists_them_all() -> None:
    error = unknown_pool("pyhton", ["python", "node"], {"python": ["w1", "w2"], "gpu": ["w3"]})
    assert isinstance(error, PoolNotFound) and error.retryable
    assert str(error) == (
        "no pool named 'pyhton': did you mean 'python'? pools there are: python (config, 2 live workers), "
        "node (config, no live worker), gpu (1 live worker)"
    )


def test_a_pool_hosted_only_by_a_worker_is_suggested_too() -> None:
    assert "did you mean 'gpu_a100'?" in str(unknown_pool("gpu_a10", ["python"], {"gpu_a100": ["w1"]}))


def test_nothing_close_means_no_suggestion() -> None:
    message = str(unknown_pool("zzz", ["python"], {}))
    assert message == "no pool named 'zzz': pools there are: python (config, no live worker)"
    assert "did you mean" not in message


def test_a_note_replaces_the_live_worker_counts() -> None:
    message = str(
        unknown_pool("pyton", ["python"], {}, note="no Redis is configured to ask the live workers")
    )
    assert message == (
        "no pool named 'pyton': did you mean 'python'? pools there are: python (config) "
        "(no Redis is configured to ask the live workers)"
    )


def test_the_error_survives_a_json_round_trip_as_its_class() -> None:
    error = unknown_pool("pyhton", ["python"], {})
    rebuilt = type(error)(*error.args)
    assert type(rebuilt) is PoolNotFound and str(rebuilt) == str(error)


@pytest.fixture
def app_without_redis() -> Celery:
    app = Celery("pools-test", broker="memory://", backend="cache+memory://", set_as_current=False)
    config = SnakepitConfig(pools=(PoolConfig(name="python"), PoolConfig(name="node")))
    install(app, config)
    return app


def test_without_redis_the_config_alone_decides(app_without_redis: Celery) -> None:
    config = SnakepitConfig(pools=(PoolConfig(name="python"), PoolConfig(name="node")))
    check_pool(app_without_redis, config, "node")  # configured: no lookup at all
    with pytest.raises(PoolNotFound, match=r"no pool named 'pyhton': did you mean 'python'\?.*no Redis"):
        check_pool(app_without_redis, config, "pyhton")


def test_every_way_of_sending_refuses_the_typo_before_publishing(app_without_redis: Celery) -> None:
    execute = app_without_redis.tasks["snakepit.execute"]
    with pytest.raises(PoolNotFound, match="'pyhton'"):
        execute.delay("ping", {}, pool="pyhton")
    with pytest.raises(PoolNotFound, match="'pyhton'"):
        execute.apply_async(("ping", {}), kwargs={"pool": "pyhton"})
    with pytest.raises(PoolNotFound, match="'pyhton'"):
        group(execute.s("ping", {}, pool="pyhton") for _ in range(3)).delay()
    with pytest.raises(PoolNotFound, match="'pyhton'"):
        chain(execute.si("ping", {}, pool="pyhton"), execute.si("ping", {})).delay()
    with pytest.raises(PoolNotFound, match="'pyhton'"):  # a later step: a worker would send it, later
        chain(
            execute.si("ping", {}), group(execute.si("ping", {}, pool="pyhton")), execute.si("ping", {})
        ).delay()
    # A queue the caller chose themselves is theirs: no check.
    execute.apply_async(("ping", {}), kwargs={"pool": "pyhton"}, queue="mine")
    # A configured pool is sent (to the memory broker) as before.
    assert execute.delay("ping", {}, pool="node").id


def test_a_redis_that_does_not_answer_refuses_the_send_saying_why() -> None:
    # Nothing listens on port 1: the registry cannot be read, so nothing proves the pool exists.
    app = Celery("pools-test", broker="memory://", backend="redis://127.0.0.1:1/0", set_as_current=False)
    config = SnakepitConfig(pools=(PoolConfig(name="python"),))
    install(app, config)
    check_pool(app, config, "python")  # configured: Redis is never asked
    with pytest.raises(PoolNotFound, match=r"'gpu'.*could not be read from Redis: ConnectionError"):
        check_pool(app, config, "gpu")

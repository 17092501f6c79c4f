"""The caller's API with no ``app=``: Celery's ``current_app`` proxy is resolved, never kept.

A Django or Flask process calls ``stream(...)``, ``batch_map(...)`` or
``config_for()`` without an app; the app is then Celery's current one, which
Celery hands out as a lazy ``Proxy``. The per-app maps are weak, and a proxy
cannot be weakly referenced: before ``app_or_current`` every such call raised
``TypeError: cannot create weak reference to 'Proxy' object``. Nothing here
needs a service: none of these calls connects to anything.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery, current_app
from celery._state import get_current_app
from celery.local import Proxy

from snakepit_celery import SnakepitConfig, Stream, batch_map, config_for, install, resolve_redis_url
from snakepit_celery.api import app_or_current
from snakepit_celery.config import PoolConfig
from snakepit_celery.streaming.caller import stream_prefix

CONFIG = SnakepitConfig(pools=(PoolConfig(name="python"),), queue_prefix="cur")


@pytest.fixture
def app() -> Iterator[Celery]:
    """A user's app, installed and made current as a Django or Flask process does (then restored)."""
    previous = get_current_app()
    # Port 1: nothing listens there, and nothing here may connect.
    user_app = Celery("web", broker="redis://127.0.0.1:1/0", backend="redis://127.0.0.1:1/1")
    user_app.set_current()
    install(user_app, CONFIG)
    try:
        yield user_app
    finally:
        previous.set_current()
        user_app.close()


def test_app_or_current_returns_the_app_itself_never_the_proxy(app: Celery) -> None:
    assert isinstance(current_app, Proxy)
    assert app_or_current(None) is app
    assert app_or_current(current_app) is app
    assert not isinstance(app_or_current(current_app), Proxy)
    other = Celery("other", set_as_current=False)
    try:
        assert app_or_current(other) is other
    finally:
        other.close()


def test_config_for_and_resolve_redis_url_accept_the_proxy_and_none(app: Celery) -> None:
    assert config_for(current_app) is CONFIG
    assert config_for() is CONFIG
    assert resolve_redis_url(current_app) == "redis://127.0.0.1:1/1"
    assert resolve_redis_url() == "redis://127.0.0.1:1/1"


def test_install_of_the_proxy_installs_the_app(app: Celery) -> None:
    config = SnakepitConfig(pools=(PoolConfig(name="node", adapter="node"),), queue_prefix="px")
    install(current_app, config)
    assert config_for(app) is config


def test_the_streams_prefix_and_follow_use_the_current_app(app: Celery) -> None:
    assert stream_prefix() == "cur"
    reader = Stream.follow("0123456789abcdef", redis_url="redis://127.0.0.1:1/2")
    try:
        assert reader.app is app
        assert (
            reader.keys == Stream.follow("0123456789abcdef", app=app, redis_url="redis://127.0.0.1:1/2").keys
        )
    finally:
        reader.close()


def test_batch_map_builds_its_chord_on_the_current_app(app: Celery) -> None:
    sig = batch_map("compute", [{"operation": "add", "a": i, "b": 1} for i in range(4)], chunk_size=2)
    assert sig.app is app
    assert [task.name for task in sig.tasks] == ["snakepit.execute_batch", "snakepit.execute_batch"]

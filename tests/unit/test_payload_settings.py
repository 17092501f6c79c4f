"""Big bytes by reference, the parts that need no Redis: the settings, the serializers install() picks,
and an app without a snakepit Redis keeping its bytes inside the messages."""

from __future__ import annotations

import pytest
from celery import Celery
from kombu.serialization import dumps, loads

from snakepit_celery import ConfigurationError, SnakepitConfig, install
from snakepit_celery.config import DEFAULT_PAYLOAD_REF_THRESHOLD, DEFAULT_PAYLOAD_REF_TTL
from snakepit_celery.payloads import MESSAGE_CONTENT_TYPE, RESULT_CONTENT_TYPE, sending


def test_defaults_and_environment_overrides() -> None:
    assert SnakepitConfig().payload_ref_threshold == DEFAULT_PAYLOAD_REF_THRESHOLD == 256 * 1024
    assert SnakepitConfig().payload_ref_ttl == DEFAULT_PAYLOAD_REF_TTL
    env = {"SNAKEPIT_PAYLOAD_REF_THRESHOLD": "0", "SNAKEPIT_PAYLOAD_REF_TTL": "60"}
    config = SnakepitConfig.from_env(env)
    assert (config.payload_ref_threshold, config.payload_ref_ttl) == (0, 60)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SNAKEPIT_PAYLOAD_REF_THRESHOLD": "1k"}, "SNAKEPIT_PAYLOAD_REF_THRESHOLD"),
        ({"SNAKEPIT_PAYLOAD_REF_TTL": "-1"}, "SNAKEPIT_PAYLOAD_REF_TTL"),
        ({"SNAKEPIT_PAYLOAD_REF_TTL": "0"}, "payload_ref_ttl"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        SnakepitConfig.from_env(env)


def test_install_picks_the_snakepit_serializers_and_still_accepts_json() -> None:
    app = Celery("payload-defaults", broker="memory://", set_as_current=False)
    install(app, SnakepitConfig())
    assert app.conf.task_serializer == "snakepit"
    assert app.conf.result_serializer == "snakepit-result"
    assert app.conf.accept_content == ["json", MESSAGE_CONTENT_TYPE]
    assert app.conf.result_accept_content == ["json", RESULT_CONTENT_TYPE]
    app.close()


def test_without_a_snakepit_redis_big_bytes_stay_inside_the_message() -> None:
    app = Celery("payload-inline", broker="memory://", set_as_current=False)
    install(app, SnakepitConfig(payload_ref_threshold=16))
    body = [["echo", {"data": b"\x00" * 1000}], {"pool": "python"}, {}]
    with sending(app):  # the message is this app's, and it has no Redis at all
        content_type, encoding, data = dumps(body, serializer="snakepit")
    assert content_type == MESSAGE_CONTENT_TYPE
    assert "snakepit_ref" not in data
    assert loads(data, content_type, encoding) == body
    app.close()

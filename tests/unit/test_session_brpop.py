"""A worker on a Redis broker sends its BRPOP again every 0.1 s, not kombu's 1 s.

kombu reads a queue whose consumer was added while a BRPOP is in flight only from
the next BRPOP: with its 1 s timeout, the first call of every new session waited
about a second in its queue (the demo showed it: three session calls in 1,050 ms).
These use kombu's own channels on a real Redis and a real RabbitMQ.
"""

from __future__ import annotations

import kombu

from snakepit_celery.sessions.consumer import BRPOP_TIMEOUT, _shorten_brpop


def test_a_redis_broker_channel_gets_the_short_brpop(redis_url: str) -> None:
    with kombu.Connection(redis_url) as connection:
        channel = connection.default_channel
        assert channel.brpop_timeout == 1  # kombu's own, which the worker replaces
        _shorten_brpop(channel)
        assert channel.brpop_timeout == BRPOP_TIMEOUT == 0.1


def test_a_rabbitmq_channel_is_left_alone(rabbitmq_url: str) -> None:
    with kombu.Connection(rabbitmq_url) as connection:
        channel = connection.default_channel
        _shorten_brpop(channel)
        assert not hasattr(channel, "brpop_timeout")

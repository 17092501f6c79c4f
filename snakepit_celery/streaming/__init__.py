"""Streaming: a bridge's chunks relayed live through Redis to any number of readers.

The worker's :class:`~snakepit_celery.streaming.relay.StreamRelay` writes each
task's chunks into a Redis Stream (sequence-numbered, bounded, with a TTL) and
ends it with a final entry carrying the outcome; the caller's
:class:`~snakepit_celery.streaming.client.Stream` reads it in order, once each,
from any position. See :mod:`snakepit_celery.streaming.protocol` for the layout
and why a Redis Stream replaces pub/sub.

The task itself (``snakepit.execute_stream``) is in
:mod:`snakepit_celery.streaming.task`, imported by ``install()`` and ``stream()``
so that this package stays importable without the worker side.
"""

from __future__ import annotations

from snakepit_celery.streaming.caller import stream
from snakepit_celery.streaming.client import Stream
from snakepit_celery.streaming.protocol import Outcome, StreamKeys
from snakepit_celery.streaming.relay import IterableSource, RelaySettings, StreamRelay

__all__ = ["IterableSource", "Outcome", "RelaySettings", "Stream", "StreamKeys", "StreamRelay", "stream"]

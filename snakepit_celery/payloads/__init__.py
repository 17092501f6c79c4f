"""Big ``bytes`` by reference: stored once in the snakepit Redis, never in the broker or the result backend.

A ``bytes`` value longer than ``payload_ref_threshold`` (256 KiB by default)
in a call's arguments or in a task's result is written to
``<prefix>:payload:<uuid>`` in the snakepit Redis with a TTL of
``payload_ref_ttl``, and the message or stored result carries a reference of a
few bytes. The worker fetches the arguments' bytes right before the task runs
(``execute``: as it builds the bridge's request, :func:`.taskrun.fetch_waiting`)
and hands them to the bridge as raw gRPC bytes (``Payload.blobs``); the
caller's ``.get()``, a chord's callback, a chain's next step and ``batch_map``
see plain ``bytes``. A payload is deleted once read: an argument's once its
call has finished, a result's when the result is decoded; whatever is never
read goes with its TTL. ``install()`` makes the app use these serializers
(:mod:`.codec`) where it kept Celery's JSON defaults.
"""

from __future__ import annotations

from snakepit_celery.payloads.codec import (
    MESSAGE_CONTENT_TYPE,
    MESSAGE_SERIALIZER,
    RESULT_CONTENT_TYPE,
    RESULT_SERIALIZER,
    PayloadRef,
    register_app,
    sending,
)
from snakepit_celery.payloads.store import PayloadStore
from snakepit_celery.payloads.taskrun import fetch_waiting  # and connects the task signals

__all__ = [
    "MESSAGE_CONTENT_TYPE",
    "MESSAGE_SERIALIZER",
    "RESULT_CONTENT_TYPE",
    "RESULT_SERIALIZER",
    "PayloadRef",
    "PayloadStore",
    "fetch_waiting",
    "register_app",
    "sending",
]

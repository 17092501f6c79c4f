"""The stream relay's Redis layout: key names, entry format, and their limits.

A stream is one Redis Stream per task (the replay buffer *and* the live feed),
written by the worker's relay and read by any number of callers with
``XREAD BLOCK``. There is no separate pub/sub channel: ``XREAD BLOCK`` wakes a
reader on the ``XADD`` as quickly as ``SUBSCRIBE`` wakes on ``PUBLISH``, but a
reader that joins late, reconnects or falls behind reads on from the last
position it saw, so live and replay are one code path and a chunk can be
neither missed in the gap between "replay" and "subscribe" nor delivered
twice. Redis, not the subscriber's socket, holds what is unread, and only the
last :data:`DEFAULT_BUFFER_CHUNKS` chunks of it: a slow reader costs bounded
memory and, once it falls further behind, gets a :class:`StreamError` naming
the gap, never silent loss.

Entry ids encode positions, so a reader resumes with a plain ``XREAD``:

* a data entry holding chunks ``s .. e-1`` has id ``e-0`` and fields
  ``s`` (its first sequence number), ``j`` (the chunks as a wire-encoded JSON
  array) and ``b0``, ``b1``... (binary values, see ``snakepit_bridge.wire``);
  the first entry also has ``t`` (the task's start time, epoch seconds);
* the final entry has id ``n-1`` (``n`` = chunks in all) and the field ``f``:
  the outcome as JSON (``ok``, ``error`` with the error's class and args, or
  ``cancelled``);
* a reader that has consumed ``p`` chunks reads after id ``p-0``: the first
  entry returned starts at or before ``p`` unless chunks were trimmed away;
* a stream that ended before its relay relayed anything (revoked while
  queued, failed before it started) has only the final entry ``0-1``; since
  ``XADD`` refuses an id at or below the last one, writing ``0-1`` is an
  atomic "end it unless anything was written already" (:func:`end_unstarted`).

Beside it: ``<key>:cancel``, a list the caller pushes to (the relay polls it);
``<key>:alive``, a short-lived key the relay refreshes while it runs, so a
reader can tell a queued stream from one whose worker died; and ``<key>:ack``,
the position of the *pacing* reader (the one ``stream()`` returns), which it
refreshes with every read. The relay never runs more than ``reader_lead``
chunks ahead of a live ack: it stops reading the bridge (gRPC flow control
then stops the generator) until the reader catches up. So the caller that
started a stream gets every chunk however slowly it reads, as long as it keeps
reading; followers, and a starter that stopped reading for ``ACK_TTL``
seconds, never hold the bridge back and get the bounded buffer instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import redis
from snakepit_bridge import wire

from snakepit_celery import errors
from snakepit_celery.errors import SnakepitError, StreamError

__all__ = [
    "ACK_TTL",
    "DEFAULT_BUFFER_CHUNKS",
    "DEFAULT_STREAM_TTL",
    "HEARTBEAT_TTL",
    "Outcome",
    "StreamKeys",
    "decode_chunks",
    "end_unstarted",
    "error_from_outcome",
    "validate_task_id",
]

#: Chunks the replay buffer keeps per stream; a reader further behind gets StreamError.
DEFAULT_BUFFER_CHUNKS = 10_000
#: Seconds a stream's keys live after the relay last wrote (late readers, SSE reconnects).
DEFAULT_STREAM_TTL = 3600
#: Seconds the ``alive`` key outlives the relay's last heartbeat.
HEARTBEAT_TTL = 10
#: Seconds between two heartbeats of a running relay.
HEARTBEAT_EVERY = 1.0
#: Seconds a pacing reader's position counts after it last read; then the relay runs free.
ACK_TTL = 10

#: Task ids become Redis keys: keep them to what Celery's uuids and sane custom ids use.
TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,199}$")

OUTCOMES = ("ok", "error", "cancelled")


def validate_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is fit for a Redis key.

    Raises:
        StreamError: it is not a string of letters, digits and ``_.:-`` (at most 200).
    """
    if not isinstance(task_id, str) or not TASK_ID_RE.match(task_id):
        raise StreamError(f"invalid stream task id {task_id!r}: must match {TASK_ID_RE.pattern}")
    return task_id


@dataclass(frozen=True)
class StreamKeys:
    """The Redis keys of one task's stream."""

    #: The Redis Stream holding the chunks and the final outcome.
    data: str
    #: The list a caller pushes a cancel request to.
    cancel: str
    #: Present while a relay is running the stream.
    alive: str
    #: The position of the pacing reader (``stream()``'s own), refreshed while it reads.
    ack: str

    @classmethod
    def for_task(cls, task_id: str, prefix: str = "snakepit") -> StreamKeys:
        base = f"{prefix}:stream:{validate_task_id(task_id)}"
        return cls(data=base, cancel=f"{base}:cancel", alive=f"{base}:alive", ack=f"{base}:ack")


@dataclass(frozen=True)
class Outcome:
    """How a stream ended: what the final entry carries."""

    #: ``ok``, ``error`` or ``cancelled``.
    status: str
    #: Chunks delivered before the end.
    chunks: int
    #: The error for ``error`` (its class is rebuilt on the caller's side).
    error: SnakepitError | None = None
    #: Why it was cancelled (``cancel()``, revoke, ...).
    reason: str = ""

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"outcome": self.status, "chunks": self.chunks}
        if self.error is not None:
            body["error"] = {"class": type(self.error).__name__, "args": [str(a) for a in self.error.args]}
        if self.reason:
            body["reason"] = self.reason
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Outcome:
        try:
            body = json.loads(raw)
            status = body["outcome"]
            chunks = int(body["chunks"])
        except (ValueError, KeyError, TypeError) as exc:
            raise StreamError(f"malformed final stream entry {raw[:200]!r}: {exc}") from None
        if status not in OUTCOMES:
            raise StreamError(f"unknown stream outcome {status!r}")
        error = error_from_outcome(body.get("error")) if status == "error" else None
        return cls(status=status, chunks=chunks, error=error, reason=str(body.get("reason", "")))

    def final_chunk(self) -> dict[str, Any]:
        """The chunk a caller sees last: ``is_final`` plus the outcome."""
        chunk: dict[str, Any] = {"is_final": True, "outcome": self.status, "chunks": self.chunks}
        if self.error is not None:
            remote = getattr(self.error, "remote_type", "") or type(self.error).__name__
            chunk["error"] = {
                "type": remote,
                "message": self.error.message,
                "class": type(self.error).__name__,
            }
        if self.reason:
            chunk["reason"] = self.reason
        return chunk


def error_from_outcome(raw: Any) -> SnakepitError:
    """Rebuild the worker's error as the same class from :mod:`snakepit_celery.errors`.

    An unknown class name (a newer worker) becomes a :class:`CommandError` that
    keeps the name, so nothing is lost from the message.
    """
    if not isinstance(raw, dict):
        return StreamError(f"stream ended in error without detail: {raw!r}")
    name = str(raw.get("class", ""))
    args = [str(a) for a in raw.get("args", [])] or [""]
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, SnakepitError) and name in errors.__all__:
        try:
            return cls(*args)
        except TypeError:
            pass
    return errors.CommandError(args[0], name)


def decode_chunks(fields: dict[bytes, bytes]) -> list[Any]:
    """The chunks of one data entry.

    Raises:
        StreamError: the entry is not a list of wire-encoded values.
    """
    blobs = []
    index = 0
    while (blob := fields.get(b"b%d" % index)) is not None:
        blobs.append(blob)
        index += 1
    try:
        chunks = wire.decode(fields[b"j"], blobs)
    except (KeyError, wire.WireError) as exc:
        raise StreamError(f"malformed stream entry: {exc}") from None
    if not isinstance(chunks, list):
        raise StreamError(f"malformed stream entry: chunks are a {type(chunks).__name__}, not a list")
    return chunks


def end_unstarted(
    client: redis.Redis, keys: StreamKeys, outcome: Outcome, *, ttl: int = DEFAULT_STREAM_TTL
) -> bool:
    """Write ``outcome`` as the final entry of a stream nothing was written to yet.

    Used by the worker for a stream that ends before its relay relays a chunk
    (revoked while queued, failed before the relay started, cancelled while
    waiting for a bridge). Two of them may race (the revoke handler and the
    task itself): the first final entry stands.

    Returns:
        False when the stream already had an entry (this outcome was dropped).
    """
    try:
        client.xadd(keys.data, {b"f": outcome.to_json()}, id="0-1")
    except redis.ResponseError as exc:
        if "equal or smaller" not in str(exc):
            raise
        return False
    client.expire(keys.data, ttl)
    return True

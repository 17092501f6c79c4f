"""What the session machinery asks of the broker, per transport.

Three operations, each with a reason:

* ``sizes``: after releasing an idle session's consumer, the owner looks
  for calls sent just before (Redis broker only; RabbitMQ keeps consumers).
* ``delete_if_empty``: an expired session's queue goes, but never with a call
  in it. On Redis one Lua script checks every priority list and deletes them
  together (kombu's own ``if_empty`` checks and deletes in two steps), plus any
  ``_kombu.binding*`` entry naming the queue; on RabbitMQ the broker's
  ``if_empty`` is atomic.
* ``recover_lost`` (Redis only): a journaled call (see
  :mod:`snakepit_celery.sessions.lease`) that is neither in the queue nor was
  restored was in flight to the dead owner: it is republished, under its own
  task id, right behind the restored messages.
* ``restore_unacked``: kombu's Redis transport keeps a delivered, unacked
  message in its ``unacked`` hash and restores it only after the visibility
  timeout (an hour by default). When a session's owner dies, the worker that
  claims it puts the session messages the dead owner had prefetched back at
  the head of their queues, oldest first, at once. (RabbitMQ requeues a dead
  connection's unacked messages itself, in their original places.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import redis
from celery.utils.functional import maybe_list
from kombu.serialization import dumps as serialize

from snakepit_celery.sessions.lease import BATCH
from snakepit_celery.sessions.routing import session_queue
from snakepit_celery.sessions.wirejson import dumps, loads

__all__ = ["BrokerOps", "LostCall", "return_delivered"]

#: A call to republish: task id, task name, args, kwargs, sending options
#: (see :data:`~snakepit_celery.sessions.calls.REPLAYED_OPTIONS`).
LostCall = tuple[str, str, list[Any], dict[str, Any], dict[str, Any]]

log = logging.getLogger(__name__)

# KEYS: the queue's lists (every priority), binding tables of its own, shared
# binding tables.  ARGV: how many lists, how many own tables, the member naming
# the queue in a shared table.  Does nothing unless every list is empty.
_DELETE_IF_EMPTY = """
local lists, own = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, lists do
  if redis.call('LLEN', KEYS[i]) > 0 then return 0 end
end
for i = 1, lists + own do redis.call('DEL', KEYS[i]) end
for i = lists + own + 1, #KEYS do
  redis.call('SREM', KEYS[i], ARGV[3])
  if redis.call('SCARD', KEYS[i]) == 0 then redis.call('DEL', KEYS[i]) end
end
return 1
"""

# KEYS: the queue's list.  ARGV: how many restored messages sit at its head,
# then the messages to put right behind them, oldest first.
_INSERT_BEHIND_HEAD = """
local k = tonumber(ARGV[1])
if k == 0 then
  for i = #ARGV, 2, -1 do redis.call('RPUSH', KEYS[1], ARGV[i]) end
  return #ARGV - 1
end
local pivot = redis.call('LINDEX', KEYS[1], -k)
for i = 2, #ARGV do
  redis.call('LINSERT', KEYS[1], 'BEFORE', pivot, ARGV[i])
  pivot = ARGV[i]
end
return #ARGV - 1
"""


def return_delivered(channel: Any) -> int:
    """Put a Redis channel's delivered, unacknowledged messages back at the head
    of their queues, in the order they were delivered; returns how many.

    For a worker leaving on purpose, before it hands its sessions over. kombu's
    own restore (when the channel closes) pushes them to the head oldest first,
    which reverses them: the newest would run first. Restored newest first, the
    oldest ends up at the head. Acknowledged messages are skipped (their
    ``unacked`` entry is gone).
    """
    qos = channel.qos
    tags = list(qos._delivered)
    for tag in reversed(tags):
        qos.restore_by_tag(tag)
    qos._delivered.clear()
    return len(tags)


class BrokerOps:
    """Broker-side operations on session queues over one kombu connection.

    Not thread-safe: one owner thread uses it.

    Args:
        app: the Celery app (its broker settings are used).
        prefix: the queue prefix.
    """

    def __init__(self, app: Any, prefix: str) -> None:
        self.app = app
        self.prefix = prefix
        self._conn: Any = None
        self._delete_script: Any = None

    @property
    def connection(self) -> Any:
        if self._conn is None:
            self._conn = self.app.connection_for_write()
            self._conn.ensure_connection(max_retries=3)
        return self._conn

    @property
    def is_redis(self) -> bool:
        return bool(self.connection.transport.driver_type == "redis")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.release()

    def _reset(self) -> None:
        # A broken channel (RabbitMQ closes it on a refused operation) is replaced.
        self.close()

    def _plain_client(self, channel: Any) -> Any:
        # The channel's client may add kombu's global key prefix itself, and only to
        # some commands; a plain client on the same pool with explicit keys does not.
        return redis.Redis(connection_pool=channel.client.connection_pool)

    def _keys(self, channel: Any, name: str) -> list[str]:
        prefix = channel.global_keyprefix or ""
        return [prefix + channel._q_for_pri(name, pri) for pri in dict.fromkeys(channel.priority_steps)]

    def sizes(self, session_ids: list[str]) -> list[int]:
        """Messages waiting in each session's queue (Redis: every priority, in one
        round trip per :data:`~snakepit_celery.sessions.lease.BATCH` sessions)."""
        if not session_ids:
            return []
        if not self.is_redis:
            return [self._declared_size(sid) for sid in session_ids]
        try:
            channel = self.connection.default_channel
            client = self._plain_client(channel)
            counts = []
            for start in range(0, len(session_ids), BATCH):
                chunk = session_ids[start : start + BATCH]
                keys = [self._keys(channel, session_queue(self.prefix, sid).name) for sid in chunk]
                with client.pipeline(transaction=False) as pipe:
                    for key in (k for ks in keys for k in ks):
                        pipe.llen(key)
                    lengths = iter(pipe.execute())
                counts += [sum(next(lengths) for _ in ks) for ks in keys]
            return counts
        except self.connection.channel_errors:
            self._reset()
            return [0] * len(session_ids)

    def _declared_size(self, session_id: str) -> int:
        try:
            queue = session_queue(self.prefix, session_id).bind(self.connection.default_channel)
            return int(queue.queue_declare(passive=True).message_count)
        except self.connection.channel_errors:  # no such queue: RabbitMQ closed the channel
            self._reset()
            return 0

    def delete_if_empty(self, session_id: str) -> bool:
        """Delete the session's queue unless a message is in it; True if it is gone."""
        queue = session_queue(self.prefix, session_id)
        channel = self.connection.default_channel
        if self.is_redis:
            client = self._plain_client(channel)
            if self._delete_script is None:
                self._delete_script = client.register_script(_DELETE_IF_EMPTY)
            lists = self._keys(channel, queue.name)
            prefix = channel.global_keyprefix or ""
            # No binding is ever made for a session queue (anonymous exchange); these
            # cover one made by hand, to an exchange named after it or the default one.
            own, shared = (
                [
                    prefix + template % (ex,)
                    for template in (channel.keyprefix_queue, channel.keyprefix_binding_permanent)
                ]
                for ex in (queue.name, self.app.conf.task_default_exchange)
            )
            member = channel.sep.join([queue.name, "", queue.name])  # routing key, pattern, queue
            done = self._delete_script(
                keys=lists + own + shared, args=[len(lists), len(own), member], client=client
            )
            return bool(done)
        try:
            queue.bind(channel).delete(if_empty=True)
            return True
        except self.connection.channel_errors as exc:
            log.debug("session queue %s not deleted: %s", queue.name, exc)
            self._reset()
            return False

    def restore_unacked(self, session_ids: Iterable[str]) -> dict[str, int]:
        """Put back the unacked messages of these sessions' queues (Redis only).

        Returns:
            How many messages were restored, per session id (sessions with none omitted).
        """
        if not self.is_redis:
            return {}
        names = {session_queue(self.prefix, s).name: s for s in session_ids}
        if not names:
            return {}
        channel = self.connection.default_channel
        client = self._plain_client(channel)
        prefix = channel.global_keyprefix or ""
        found: list[tuple[float, str, str]] = []
        for tag, raw in client.hscan_iter(prefix + channel.unacked_key):
            try:
                _payload, exchange, routing_key = loads(raw)
            except (ValueError, TypeError):
                continue
            if not exchange and routing_key in names:
                score = client.zscore(prefix + channel.unacked_index_key, tag) or 0.0
                tag_text = tag.decode() if isinstance(tag, bytes) else str(tag)
                found.append((float(score), tag_text, names[routing_key]))
        counts: dict[str, int] = {}
        # Newest first: each restore pushes to the head, so the oldest ends up first.
        for _, tag, session_id in sorted(found, reverse=True):
            channel.qos.restore_by_tag(tag, client=channel.client)
            counts[session_id] = counts.get(session_id, 0) + 1
        if found:
            log.info("restored %d unacked session message(s) of a dead owner", len(found))
        return counts

    def restore_tags(self, tags: Iterable[str]) -> int:
        """Put these delivered, unacknowledged messages back at the head of their
        queues now (Redis only; the pool calls of a dead worker). Returns how many
        were tried; one already acked or restored is skipped by kombu."""
        if not self.is_redis:
            return 0
        channel = self.connection.default_channel
        count = 0
        for tag in tags:
            channel.qos.restore_by_tag(tag, client=channel.client)
            count += 1
        return count

    def stale_unacked(self, queue_prefix: str, before: float) -> list[tuple[str, str]]:
        """``(task id, delivery tag)`` of the unacknowledged messages of the queues
        named ``queue_prefix...`` delivered (or last refreshed) before ``before``
        (a ``time.time()``), Redis only: what a worker may have held unrecorded."""
        if not self.is_redis:
            return []
        channel = self.connection.default_channel
        client = self._plain_client(channel)
        prefix = channel.global_keyprefix or ""
        tags = client.zrangebyscore(prefix + channel.unacked_index_key, 0, before)
        if not tags:
            return []
        found = []
        for tag, raw in zip(tags, client.hmget(prefix + channel.unacked_key, tags), strict=True):
            if raw is None:
                continue  # acked meanwhile
            try:
                payload, _exchange, routing_key = loads(raw)
                task_id = str(payload["headers"]["id"])
            except (ValueError, TypeError, KeyError):
                continue
            if str(routing_key).startswith(queue_prefix):
                found.append((task_id, tag.decode() if isinstance(tag, bytes) else str(tag)))
        return found

    def refresh_unacked(self, tags: list[str]) -> None:
        """Mark these unacknowledged messages as delivered just now (Redis only),
        so kombu's visibility timeout never hands a live worker's long wait or
        long call to another worker; only a dead worker's messages age."""
        if not tags or not self.is_redis:
            return
        channel = self.connection.default_channel
        client = self._plain_client(channel)
        now = time.time()
        client.zadd(
            (channel.global_keyprefix or "") + channel.unacked_index_key, dict.fromkeys(tags, now), xx=True
        )

    def queued_ids(self, session_id: str) -> set[str]:
        """Task ids of the messages in the session's queue (Redis only)."""
        channel = self.connection.default_channel
        client = self._plain_client(channel)
        ids = set()
        for key in self._keys(channel, session_queue(self.prefix, session_id).name):
            for raw in client.lrange(key, 0, -1):
                try:
                    ids.add(str(loads(raw)["headers"]["id"]))
                except (ValueError, TypeError, KeyError):
                    continue
        return ids

    def recover_lost(self, session_id: str, calls: list[LostCall], behind: int) -> int:
        """Republish ``calls`` (oldest first) right behind the ``behind`` messages at
        the head of the session's queue (Redis only); returns how many."""
        if not calls or not self.is_redis:
            return 0
        channel = self.connection.default_channel
        client = self._plain_client(channel)
        name = session_queue(self.prefix, session_id).name
        raws = []
        for task_id, task_name, args, kwargs, options in calls:
            canvas = dict(options)
            # Named as Celery's send_task names them in the message.
            canvas["callbacks"] = maybe_list(canvas.pop("link", None))
            canvas["errbacks"] = maybe_list(canvas.pop("link_error", None))
            headers, properties, body, _ = self.app.amqp.create_task_message(
                task_id, task_name, args, kwargs, **canvas
            )
            ctype, cenc, data = serialize(body, serializer="json")  # type: ignore[no-untyped-call]
            message = channel.prepare_message(
                data, None, ctype, cenc, headers, dict(properties, delivery_mode=2)
            )
            # NOTE: what kombu's basic_publish adds for the anonymous exchange.
            channel._inplace_augment_message(message, "", name)
            raws.append(dumps(message))
        key = (channel.global_keyprefix or "") + channel._q_for_pri(name, 0)
        script = client.register_script(_INSERT_BEHIND_HEAD)
        script(keys=[key], args=[behind, *raws], client=client)
        log.warning("republished %d session call(s) lost in flight to a dead owner", len(raws))
        return len(raws)

"""The broker side of sessions (BrokerOps) against a real private Redis broker: restoring a
dead owner's messages, republishing calls lost in flight, sizes, deleting empty queues."""

from __future__ import annotations

import time

import redis
from kombu import Connection, Consumer, Producer
from kombu.utils import json
from test_sessions_lease import P, register, wait_for

from snakepit_celery.sessions.lease import LeaseTable
from snakepit_celery.sessions.routing import session_queue


class _App:
    """Just what BrokerOps asks of a Celery app."""

    def __init__(self, url: str) -> None:
        self.url = url

        class conf:
            task_default_exchange = "celery"

        self.conf = conf

    def connection_for_write(self) -> Connection:
        return Connection(self.url)


def test_restore_unacked_puts_a_dead_owners_messages_back_in_order(redis_url: str) -> None:
    from snakepit_celery.sessions.broker import BrokerOps

    queue = session_queue(P, "s1")
    with Connection(redis_url) as conn:
        producer = Producer(conn.channel())
        for i in range(5):
            producer.publish({"n": i}, exchange="", routing_key=queue.name, serializer="json")
        # The "owner": takes three without acking, then dies (its connection is
        # simply abandoned: nothing is restored at close).
        owner = Connection(redis_url)
        channel = owner.channel()
        channel.qos.restore_at_shutdown = False
        got: list[int] = []
        consumer = Consumer(channel, [queue], callbacks=[lambda body, msg: got.append(body["n"])])
        consumer.qos(prefetch_count=3)
        consumer.consume()
        while len(got) < 3:
            owner.drain_events(timeout=2)
        assert got == [0, 1, 2]
        assert conn.default_channel.client.hlen("unacked") == 3
        ops = BrokerOps(_App(redis_url), P)
        try:
            assert ops.restore_unacked(["s1", "other"]) == {"s1": 3}
            assert ops.sizes(["s1"]) == [5]
            assert ops.delete_if_empty("s1") is False
        finally:
            ops.close()
        owner.release()
        # Everything comes back, in the original order.
        with Connection(redis_url) as again:
            order: list[int] = []
            c2 = Consumer(again.channel(), [queue], callbacks=[lambda b, m: (order.append(b["n"]), m.ack())])
            c2.consume()
            while len(order) < 5:
                again.drain_events(timeout=2)
        assert order == [0, 1, 2, 3, 4]


def test_delete_if_empty_leaves_no_key(redis_url: str) -> None:
    from snakepit_celery.sessions.broker import BrokerOps

    client = redis.Redis.from_url(redis_url)
    queue = session_queue(P, "s2")
    with Connection(redis_url) as conn:
        Producer(conn.channel()).publish({"n": 1}, exchange="", routing_key=queue.name, priority=5)
        # A binding somebody made by hand, to an exchange named after the queue.
        bound = queue.__class__(queue.name, exchange=queue.name, routing_key=queue.name)
        bound(conn.channel()).declare()
        assert client.keys("_kombu.binding.*")
        ops = BrokerOps(_App(redis_url), P)
        try:
            assert ops.sizes(["s2", "nosuch"]) == [1, 0]
            assert ops.delete_if_empty("s2") is False
            msg = conn.SimpleQueue(queue).get(timeout=2)
            msg.ack()
            assert ops.delete_if_empty("s2") is True
        finally:
            ops.close()
    left = [k for k in client.keys("*") if b"s2" in k]
    assert left == []


def test_a_call_lost_in_flight_to_a_dead_owner_is_republished_in_order(redis_url: str) -> None:
    """kombu's Redis BRPOP takes a message off the list before the worker records
    it as unacked: the dead owner here had #1 unacked, had taken #2 off the list
    when it died (lost in flight), and #3 was still queued. The claimer puts all
    three back, in order; #2, a chord's header call, still belongs to its chord."""
    from celery import Celery

    from snakepit_celery import SnakepitConfig, install
    from snakepit_celery.sessions import SessionSettings, configure_sessions
    from snakepit_celery.sessions.housekeeping import Housekeeper
    from snakepit_celery.sessions.manager import SessionManager

    app = Celery("lost", broker=redis_url, backend=redis_url, set_as_current=False)
    install(app, SnakepitConfig(queue_prefix=P))
    settings = SessionSettings(expiry_grace=0.2, lease_ttl=3)
    configure_sessions(app, settings)
    table = LeaseTable(redis.Redis.from_url(redis_url), P)
    register(table, "dead", lease_ms=300)
    call = app.tasks["snakepit.execute_in_session"]
    link, link_error = (
        app.signature("snakepit.execute", ["ping"]),
        app.signature("snakepit.execute", ["echo"]),
    )
    body = app.signature("snakepit.execute", ["echo", {"summed": True}])
    canvas = {"link": link, "link_error": link_error, "chord": body, "group_id": "g-42", "group_index": 1}
    sent = [
        call.apply_async(("s1", "increment_counter", {"by": i}), **(canvas if i == 2 else {})).id
        for i in (1, 2, 3)
    ]
    queue = session_queue(P, "s1")
    client = redis.Redis.from_url(redis_url)
    owner = Connection(redis_url)
    channel = owner.channel()
    channel.qos.restore_at_shutdown = False
    got: list[str] = []
    consumer = Consumer(channel, [queue], callbacks=[lambda body, msg: got.append(msg.headers["id"])])
    consumer.qos(prefetch_count=1)
    consumer.consume()
    while not got:
        owner.drain_events(timeout=2)
    assert got == [sent[0]]  # #1: unacked
    assert client.rpop(queue.name)  # #2: taken off the list by the owner, which then died
    manager = SessionManager(
        app,
        redis_url=redis_url,
        prefix=P,
        pools=["python"],
        hostname="w1@test",
        settings=settings,
        host=lambda: None,
    )
    manager.register()
    keeper = Housekeeper(manager)
    try:
        assert wait_for(lambda: table.dead_workers() == ["dead"])
        time.sleep(0.3)  # past the journal horizon (a condition on Redis' clock, not a wait for work)
        keeper.take_over_dead()
        assert table.route_of("s1")["owner"] == manager.worker_id
        order = []
        with Connection(redis_url) as again:
            c2 = Consumer(
                again.channel(),
                [queue],
                callbacks=[lambda body, msg: (order.append((msg.headers, body)), msg.ack())],
            )
            c2.consume()
            while len(order) < 3:
                again.drain_events(timeout=2)
        assert [headers["id"] for headers, _ in order] == sent
        # Sent by name; the republished one positionally, its pool resolved.
        assert [(b[1].get("args") or b[0][2]) for _, b in order] == [{"by": 1}, {"by": 2}, {"by": 3}]
        assert order[1][1][1]["pool"] == "python"
        # What runs after #2, and its place in its group, came back with it.
        headers, (_, _, embed) = order[1]
        assert (headers["group"], headers["group_index"]) == ("g-42", 1)
        as_sent = json.loads(json.dumps({"callbacks": [link], "errbacks": [link_error], "chord": body}))
        assert {key: embed[key] for key in as_sent} == as_sent
        assert order[2][0]["group"] is None and order[2][1][2]["callbacks"] is None  # #3 had none
    finally:
        keeper.broker.close()
        owner.release()
        app.close()

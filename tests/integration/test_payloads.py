"""Big ``bytes`` by reference: stored once in the snakepit Redis, never in the broker or the result backend.

One worker (Redis broker) serves the module with a threshold lowered to 64 KiB;
the leak test has its own worker, as a chain leaves its middle step's unread
result to its TTL.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import chain, chord
from itworkers import Worker, WorkerFactory, wait_for
from kombu.exceptions import EncodeError

from snakepit_celery import PayloadExpired, PayloadTooLarge, batch_map
from snakepit_celery.api import resolve_redis_url

MIB = 1024 * 1024
THRESHOLD = 64 * 1024
POOLS = {"python": {"size": 2}, "small": {"size": 1, "max_payload_bytes": MIB}}
ENV = {"SNAKEPIT_PAYLOAD_REF_THRESHOLD": str(THRESHOLD)}


@pytest.fixture(scope="module")
def worker(module_worker_factory: WorkerFactory) -> Worker:
    return module_worker_factory(POOLS, env=ENV, args=("--concurrency", "4"))


@pytest.fixture
def snakepit_redis(worker: Worker) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(resolve_redis_url(worker.app))
    yield client
    client.close()


def payload_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    return list(client.scan_iter(f"{prefix}:payload:*", count=1000))


def wait_no_payload_keys(client: redis.Redis, prefix: str, timeout: float = 20.0) -> None:
    """Poll until no payload key of ``prefix`` is left (an argument's goes once its task has ended)."""
    deadline = time.monotonic() + timeout
    while keys := payload_keys(client, prefix):
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(keys)} payload key(s) left: {keys[:5]}")
        time.sleep(0.05)


def test_10_mib_echo_round_trips_equal(worker: Worker, snakepit_redis: redis.Redis) -> None:
    data = os.urandom(10 * MIB)
    echoed = worker.execute.delay("echo", {"data": data, "n": 1}).get(timeout=60)["echoed"]
    assert echoed == {"data": data, "n": 1}
    assert type(echoed["data"]) is bytes
    wait_no_payload_keys(snakepit_redis, worker.prefix)


def test_the_message_and_the_result_carry_a_reference_not_the_bytes(
    worker: Worker, snakepit_redis: redis.Redis
) -> None:
    """The message waits in a queue nobody consumes: a few hundred bytes beside 10 MiB in Redis;
    the result, stored before it is read, likewise."""
    data = os.urandom(10 * MIB)
    caller = worker.caller_app(["python", "parked"])  # "parked": configured here, hosted by no worker
    try:
        caller.tasks["snakepit.execute"].apply_async(("echo", {"data": data}), kwargs={"pool": "parked"})
        broker = redis.Redis.from_url(worker.broker)
        try:
            messages = broker.lrange(f"{worker.prefix}.pool.parked", 0, -1)
        finally:
            broker.close()
            delete_queues_redis(worker.broker, f"{worker.prefix}.pool.parked")
        assert len(messages) == 1
        assert len(messages[0]) < 4096, len(messages[0])
        envelope = json.loads(messages[0])
        assert envelope["content-type"] == "application/x-snakepit+json"
        assert b'"snakepit_ref"' in base64.b64decode(envelope["body"])
        (key,) = payload_keys(snakepit_redis, worker.prefix)
        assert snakepit_redis.get(key) == data
        assert 0 < snakepit_redis.ttl(key) <= 3600
        snakepit_redis.delete(key)
    finally:
        caller.close()

    result = worker.execute.delay("echo", {"data": data})
    meta_key = f"celery-task-meta-{result.id}"
    wait_for(lambda: snakepit_redis.exists(meta_key), 60, "the stored result")
    assert len(snakepit_redis.get(meta_key) or b"") < 4096
    assert result.get(timeout=10)["echoed"]["data"] == data
    wait_no_payload_keys(snakepit_redis, worker.prefix)


def delete_queues_redis(url: str, name: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.delete(name)
    finally:
        client.close()


def test_a_result_is_read_once(worker: Worker) -> None:
    """Its payload deleted by the first read, the result then fails with PayloadExpired for
    another reader (here another caller app, as another process would be)."""
    data = os.urandom(MIB)
    result = worker.execute.delay("echo", {"data": data})
    assert result.get(timeout=30)["echoed"]["data"] == data
    other = worker.caller_app(["python"])
    try:
        with pytest.raises(PayloadExpired, match="is gone from the snakepit Redis"):
            other.AsyncResult(result.id).get(timeout=10)
    finally:
        other.close()


def test_a_chord_and_a_chain_of_echo_see_plain_bytes(worker: Worker) -> None:
    blobs = [os.urandom(MIB + i) for i in range(4)]
    echoed_bytes = worker.app.tasks["itest.echoed_bytes"]
    header = [worker.execute.s("echo", {"data": b}) for b in blobs]
    assert chord(header)(echoed_bytes.s()).get(timeout=60) == blobs
    in_chain = chain(worker.execute.si("echo", {"data": blobs[0]}), echoed_bytes.s())
    assert in_chain().get(timeout=60) == blobs[0]


def test_batch_map_of_big_bytes_sees_plain_bytes(worker: Worker) -> None:
    blobs = [os.urandom(THRESHOLD + i) for i in range(20)]
    mapped = batch_map("echo", [{"data": b} for b in blobs], app=worker.app, chunk_size=5)
    assert [r["echoed"]["data"] for r in mapped.delay().get(timeout=60)] == blobs


def test_a_session_call_with_big_bytes_round_trips(worker: Worker, snakepit_redis: redis.Redis) -> None:
    data = os.urandom(2 * MIB)
    call = worker.app.tasks["snakepit.execute_in_session"]
    assert call.delay("payload-s1", "echo", {"data": data}).get(timeout=60)["echoed"]["data"] == data
    wait_no_payload_keys(snakepit_redis, worker.prefix)


def test_over_max_payload_bytes_is_refused_before_anything_is_stored(
    worker: Worker, snakepit_redis: redis.Redis
) -> None:
    before = set(payload_keys(snakepit_redis, worker.prefix))
    with pytest.raises(PayloadTooLarge) as excinfo:
        worker.execute.apply_async(("echo", {"data": os.urandom(2 * MIB)}), kwargs={"pool": "small"})
    message = str(excinfo.value)
    assert message.startswith("arguments are 2097"), message  # 2 MiB and the JSON around it
    assert message.endswith("over the limit of 1048576 bytes (max_payload_bytes of pool 'small')")
    assert set(payload_keys(snakepit_redis, worker.prefix)) == before
    session_call = worker.app.tasks["snakepit.execute_in_session"]
    with pytest.raises(
        EncodeError, match=r"over the limit of 1048576 bytes \(max_payload_bytes of pool 'small'\)"
    ):
        session_call.apply_async(
            ("payload-s2", "echo", {"data": os.urandom(2 * MIB)}), kwargs={"pool": "small"}
        )
    assert set(payload_keys(snakepit_redis, worker.prefix)) == before


def test_no_payload_key_is_left_after_1000_calls(worker_factory: WorkerFactory) -> None:
    own = worker_factory({"python": {"size": 2}}, env={"SNAKEPIT_PAYLOAD_REF_THRESHOLD": "1024"})
    client = redis.Redis.from_url(resolve_redis_url(own.app))
    try:
        blobs = [os.urandom(1025 + i % 7) for i in range(1000)]
        results = [own.execute.delay("echo", {"data": b}) for b in blobs]
        assert [r.get(timeout=120)["echoed"]["data"] for r in results] == blobs
        wait_no_payload_keys(client, own.prefix)
    finally:
        client.close()


ARRAYS = {"python": {"size": 1, "handler": "tests.handlers:TestHandler"}}


@pytest.fixture(scope="module")
def array_worker(module_worker_factory: WorkerFactory) -> Worker:
    pytest.importorskip("numpy")
    repo = str(Path(__file__).resolve().parents[2])  # the bridge imports tests.handlers
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    return module_worker_factory(ARRAYS, env={**ENV, "PYTHONPATH": path}, name="arrays")


def test_numpy_arrays_arrive_as_arrays_and_come_back_as_arrays(
    array_worker: Worker, snakepit_redis: redis.Redis
) -> None:
    import numpy as np

    small = np.arange(6, dtype=np.float32).reshape(2, 3)
    big = np.ones((512, 256), dtype=">f8")  # 1 MiB, big-endian: sent little-endian, by reference
    ints = np.array([-(2**40), 7], dtype=np.int64)
    result = array_worker.execute.delay("array_facts", {"small": small, "big": big, "ints": ints})
    facts = result.get(timeout=60)
    assert facts["small"]["type"] == "numpy.ndarray"  # in the handler: an array, not a list
    assert (facts["small"]["dtype"], facts["small"]["shape"], facts["small"]["sum"]) == (
        "float32",
        [2, 3],
        15.0,
    )
    assert (facts["big"]["dtype"], facts["big"]["shape"], facts["big"]["sum"]) == (
        "float64",
        [512, 256],
        131072.0,
    )
    assert facts["ints"]["sum"] == float(-(2**40) + 7)
    for name, sent in (("small", small), ("big", big), ("ints", ints)):
        back = facts[name]["doubled"]
        assert isinstance(back, np.ndarray) and back.shape == sent.shape, name
        assert np.array_equal(back, sent * 2), name
    wait_no_payload_keys(snakepit_redis, array_worker.prefix)


def test_an_array_never_travels_as_a_json_list(array_worker: Worker) -> None:
    import numpy as np

    from snakepit_celery.payloads.codec import dumps_message

    body = dumps_message([["array_facts", {"a": np.arange(1000, dtype=np.int32)}], {"pool": "python"}, {}])
    assert "snakepit_ndarray" in body and "999" not in body  # raw bytes (base64), not numbers
    with pytest.raises(Exception, match="arrays of numbers"):
        array_worker.execute.delay("array_facts", {"a": np.array(["text"])})

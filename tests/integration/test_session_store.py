"""SessionStore against a real (private) Redis."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from snakepit_celery.errors import InvalidSessionId, SessionError, SessionNotFound
from snakepit_celery.sessions import SessionStore


@pytest.fixture
def store(redis_url: str) -> SessionStore:
    return SessionStore(redis_url, prefix="sptest")


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_create_get_list_delete(store: SessionStore) -> None:
    created = store.create_session("user_123", ttl=7200, metadata={"plan": "pro"})
    assert created["id"] == "user_123"
    assert created["ttl"] == 7200
    got = store.get_session("user_123")
    assert got is not None
    assert got["metadata"] == {"plan": "pro"}
    assert store.session_exists("user_123")
    assert store.list_sessions() == ["user_123"]
    assert store.delete_session("user_123") is True
    assert store.delete_session("user_123") is False
    assert store.get_session("user_123") is None
    assert not store.session_exists("user_123")
    assert store.list_sessions() == []


def test_create_existing_returns_it_unchanged(store: SessionStore) -> None:
    store.create_session("s1", ttl=100, metadata={"a": 1})
    again = store.create_session("s1", ttl=999, metadata={"a": 2})
    assert again["metadata"] == {"a": 1}
    assert again["ttl"] == 100


def test_read_refreshes_ttl(store: SessionStore) -> None:
    store.create_session("s1", ttl=100)
    store.redis.expire("sptest:session:s1", 5)  # as if 95 s had passed
    assert store.redis.ttl("sptest:session:s1") <= 5
    store.get_session("s1")
    assert store.redis.ttl("sptest:session:s1") > 90


def test_keep_alive_restarts_the_ttl_of_the_sessions_that_exist(store: SessionStore) -> None:
    store.create_session("s1", ttl=100)
    store.create_session("s2", ttl=50)
    for sid in ("s1", "s2"):
        store.redis.expire(f"sptest:session:{sid}", 5)  # as if they had been idle a while
    before = time.time()
    assert store.keep_alive(["s1", "gone", "s2"]) == ["s1", "s2"]
    assert store.redis.ttl("sptest:session:s1") > 90
    assert 40 < store.redis.ttl("sptest:session:s2") <= 50  # each its own ttl
    assert store.redis.zscore("sptest:sessions", "s1") >= before + 100  # the index agrees
    assert not store.session_exists("gone")  # a missing session is not created
    assert store.keep_alive([]) == []


def test_expiry_then_cleanup_leaves_no_key(store: SessionStore) -> None:
    store.create_session("short", ttl=1)
    store.store_program("short", "p", {"x": 1})
    assert wait_for(lambda: not store.session_exists("short"), timeout=5)
    assert store.list_sessions() == []
    assert store.get_stats()["expired_pending"] == 1
    assert store.cleanup_expired_sessions() == ["short"]
    assert store.cleanup_expired_sessions() == []
    assert [k for k in store.redis.keys("sptest:*") if b"short" in k] == []
    assert store.redis.zcard("sptest:sessions") == 0


def test_update_is_atomic_under_racing_writers(store: SessionStore) -> None:
    store.create_session("race", ttl=100, metadata={"n": 0})

    def bump(doc: dict) -> None:
        doc["metadata"]["n"] += 1

    threads = [
        threading.Thread(target=lambda: [store.update_session("race", bump) for _ in range(10)])
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = store.get_session("race")
    assert got is not None
    assert got["metadata"]["n"] == 80


def test_update_missing_session(store: SessionStore) -> None:
    with pytest.raises(SessionNotFound, match="'ghost'"):
        store.update_session("ghost", lambda doc: doc)


def test_programs_and_global_programs(store: SessionStore) -> None:
    store.create_session("s1")
    store.store_program("s1", "prog_1", {"model": "gpt-4", "temperature": 0.8, "blob": b"\x00\xff"})
    assert store.get_program("s1", "prog_1") == {"model": "gpt-4", "temperature": 0.8, "blob": b"\x00\xff"}
    assert store.get_program("s1", "nope") is None
    with pytest.raises(SessionNotFound):
        store.get_program("ghost", "prog_1")
    store.store_global_program("template_1", {"prompt": "Answer: {question}"})
    assert store.get_global_program("template_1") == {"prompt": "Answer: {question}"}
    assert store.get_global_program("missing") is None
    assert store.get_stats() == {"sessions": 1, "expired_pending": 0, "global_programs": 1}


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("", "empty"),
        ("x" * 129, "limit is 128"),
        ("a b", "' '"),
        ("a:b", "':'"),
        ("-lead", "must start"),
        ("ü", "'ü'"),
    ],
)
def test_bad_ids_refused_before_anything_is_sent(store: SessionStore, bad: str, says: str) -> None:
    with pytest.raises(InvalidSessionId, match=says):
        store.create_session(bad)
    assert store.redis.keys("*") == []


def test_bad_ttl_and_url(redis_url: str) -> None:
    store = SessionStore(redis_url, prefix="sptest")
    with pytest.raises(SessionError, match="ttl"):
        store.create_session("s1", ttl=0)
    from snakepit_celery.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="redis_url"):
        SessionStore("amqp://localhost")
    assert isinstance(store.redis, redis.Redis)


def test_cleanup_keeps_a_session_created_again_after_expiry(store: SessionStore) -> None:
    store.create_session("again", ttl=1)
    assert wait_for(lambda: not store.session_exists("again"), timeout=5)
    store.create_session("again", ttl=100)
    assert store.cleanup_expired_sessions() == []
    assert store.list_sessions() == ["again"]
    assert 90 < store.redis.ttl("sptest:session:again") <= 100

"""A Redis over TLS and a RabbitMQ user with its own vhost and password, end to end.

The TLS Redis is a ``redis-server`` of the test's own listening on ``--tls-port``
only (``--port 0``: no plain connection is possible), with a CA and a server
certificate the test makes with the ``openssl`` CLI. The worker is the CLI's and
gets nothing but ``rediss://`` URLs carrying ``ssl_cert_reqs`` and ``ssl_ca_certs``;
they reach every Redis client the library makes: kombu's broker channel, Celery's
result backend, the session leases and store, the call ledger, the streams, the
payload store (a value past ``payload_ref_threshold``) and the async callers'
``redis.asyncio`` clients. The RabbitMQ vhost and
user are made with ``rabbitmqctl`` and deleted at the end.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from redisprocs import RedisProcess
from testprocs import missing_service

from snakepit_celery import aclose_clients, aexecute
from snakepit_celery.api import create_app, resolve_redis_url
from snakepit_celery.config import SnakepitConfig
from snakepit_celery.integration.workerproc import WorkerProcess
from snakepit_celery.sessions.store import SessionStore
from snakepit_celery.streaming.caller import stream

CLI = [sys.executable, "-m", "snakepit_celery.cli", "worker"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1; their paths."""
    if shutil.which("openssl") is None:
        missing_service("the openssl CLI is not on PATH (it makes the test's certificates)")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=snakepit test CA", cwd=folder)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=folder)  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "san.cnf", cwd=folder)  # fmt: skip
    return {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisProcess, Path]]:
    """A redis-server reachable only over TLS, and the CA that signed its certificate."""
    files = _certificates(tmp_path_factory.mktemp("tls"))
    server = RedisProcess(
        "--tls-cert-file", str(files["cert"]), "--tls-key-file", str(files["key"]),
        "--tls-ca-cert-file", str(files["ca"]), "--tls-auth-clients", "no",
        tls=True, ssl_ca_certs=str(files["ca"]), ssl_cert_reqs="required",
    )  # fmt: skip
    try:
        server.start()
    except AssertionError as exc:
        server.stop()
        if "TLS" in str(exc) or "tls" in str(exc):
            # Not a missing service but a build without TLS: skipped in CI too (nothing to test).
            pytest.skip(f"this redis-server was built without TLS support: {str(exc)[-300:]}")
        raise
    try:
        yield server, files["ca"]
    finally:
        server.stop()


def _tls_url(server: RedisProcess, ca: Path, db: int) -> str:
    return f"rediss://127.0.0.1:{server.port}/{db}?ssl_cert_reqs=required&ssl_ca_certs={quote(str(ca))}"


def _worker_env(broker: str, **extra: str) -> dict[str, str]:
    prefix = f"sec{uuid.uuid4().hex[:8]}"
    return {
        "SNAKEPIT_BROKER_URL": broker,
        "SNAKEPIT_QUEUE_PREFIX": prefix,
        "SNAKEPIT_POOL_SIZE": "1",
        **extra,
    }


def test_execute_session_stream_and_payloads_through_a_tls_redis(
    tls_redis: tuple[RedisProcess, Path], tmp_path: Path
) -> None:
    server, ca = tls_redis
    env = _worker_env(
        _tls_url(server, ca, 0),
        SNAKEPIT_RESULT_BACKEND=_tls_url(server, ca, 1),
        SNAKEPIT_REDIS_URL=_tls_url(server, ca, 2),
    )
    hostname = f"{env['SNAKEPIT_QUEUE_PREFIX']}@{socket.gethostname()}"
    app = create_app(SnakepitConfig.from_env(env))
    try:
        with WorkerProcess(argv=[*CLI, "-n", hostname, "--without-mingle"], env=env, cwd=str(tmp_path)) as w:
            w.wait_ready(app, hostname)
            execute = app.tasks["snakepit.execute"]
            assert (
                execute.delay("compute", {"operation": "add", "a": 5, "b": 3}).get(timeout=20)["result"] == 8
            )

            session = f"{env['SNAKEPIT_QUEUE_PREFIX']}-user"
            in_session = app.tasks["snakepit.execute_in_session"]
            counters = [
                in_session.delay(session, "increment_counter", {}).get(timeout=30)["value"] for _ in range(3)
            ]
            assert counters == [1, 2, 3]
            assert SessionStore(resolve_redis_url(app), prefix=env["SNAKEPIT_QUEUE_PREFIX"]).session_exists(
                session
            )

            args = {"total_rows": 1000, "chunk_size": 100}
            with stream("process_large_dataset", args, app=app, timeout=30) as s:
                chunks = list(s)
            assert [c["processed_rows"] for c in chunks] == list(range(100, 1001, 100))

            big = bytes(range(256)) * 2048  # 512 KiB: past payload_ref_threshold, via the payload store
            assert execute.delay("echo", {"data": big}).get(timeout=30)["echoed"]["data"] == big

            async def awaited() -> int:  # the async callers' redis.asyncio clients, from the same URLs
                try:
                    result = await aexecute("compute", {"operation": "add", "a": 2, "b": 2}, app=app, wait=30)
                    return int(result["result"])
                finally:
                    await aclose_clients()

            assert asyncio.run(awaited()) == 4
            assert w.stop() == 0
    finally:
        app.close()


@pytest.fixture
def rabbitmq_vhost(rabbitmq_url: str) -> Iterator[str]:
    """A vhost and a user with a password of this test's own: their amqp:// URL."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        missing_service("rabbitmqctl is not on PATH (it makes the test's vhost and user)")
    tag = uuid.uuid4().hex[:8]
    vhost, user, password = f"snakepit-test-{tag}", f"snakepit-{tag}", f"pw-{uuid.uuid4().hex}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ctl, *args], capture_output=True, text=True, timeout=60)

    made = run("add_vhost", vhost)
    if made.returncode != 0:
        missing_service(f"rabbitmqctl add_vhost failed (it needs root or the rabbitmq user): {made.stderr}")
    try:
        for step in (("add_user", user, password), ("set_permissions", "-p", vhost, user, ".*", ".*", ".*")):
            done = run(*step)
            assert done.returncode == 0, f"rabbitmqctl {step[0]}: {done.stderr}"
        yield f"amqp://{user}:{password}@127.0.0.1:5672/{quote(vhost, safe='')}"
    finally:
        run("delete_user", user)
        run("delete_vhost", vhost)  # its queues and exchanges go with it


def test_execute_and_a_session_on_a_rabbitmq_vhost_of_its_own(
    rabbitmq_vhost: str, redis_url: str, tmp_path: Path
) -> None:
    env = _worker_env(rabbitmq_vhost, SNAKEPIT_RESULT_BACKEND=redis_url)
    hostname = f"{env['SNAKEPIT_QUEUE_PREFIX']}@{socket.gethostname()}"
    app = create_app(SnakepitConfig.from_env(env))
    try:
        with WorkerProcess(argv=[*CLI, "-n", hostname, "--without-mingle"], env=env, cwd=str(tmp_path)) as w:
            w.wait_ready(app, hostname)
            execute = app.tasks["snakepit.execute"]
            assert (
                execute.delay("compute", {"operation": "add", "a": 5, "b": 3}).get(timeout=20)["result"] == 8
            )
            session = f"{env['SNAKEPIT_QUEUE_PREFIX']}-user"
            in_session = app.tasks["snakepit.execute_in_session"]
            counters = [
                in_session.delay(session, "increment_counter", {}).get(timeout=30)["value"] for _ in range(2)
            ]
            assert counters == [1, 2]
            assert w.stop() == 0
            password = rabbitmq_vhost.split(":")[2].split("@")[0]
            assert password not in w.log()  # Celery's banner masks it
    finally:
        app.close()

"""Helpers of the bridge contract suite: launching a bridge, calling it over gRPC.

Nothing here knows which language the bridge is written in: a bridge is an
argv that serves the Bridge and Health services on the Unix socket it is
given. The client side encodes values with the protocol's codec
(``snakepit_bridge.wire``), as the pool does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from snakepit_bridge import wire
from snakepit_bridge._proto import bridge_pb2, bridge_pb2_grpc
from testprocs import LONG_LIVED

#: Commands of the showcase handler every bridge serves.
SHOWCASE_UNARY = (
    "ping",
    "echo",
    "compute",
    "info",
    "random",
    "sleep",
    "set_counter",
    "get_counter",
    "increment_counter",
)
SHOWCASE_STREAMS = (
    "ping_stream",
    "batch_inference",
    "process_large_dataset",
    "tail_and_analyze",
    "distributed_training",
)
#: Seconds a bridge has to report SERVING.
START_TIMEOUT = 20.0
#: Seconds a stopped bridge has to be gone.
STOP_TIMEOUT = 5.0
ERROR_KEY = "snakepit-error-bin"
Kind = bridge_pb2.ErrorDetail.Kind


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns a true value; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def payload(value: Any) -> bridge_pb2.Payload:
    data, blobs = wire.encode(value)
    return bridge_pb2.Payload(json=data, blobs=blobs)


def unpayload(message: bridge_pb2.Payload) -> Any:
    return wire.decode(message.json, list(message.blobs))


def error_detail(error: grpc.RpcError) -> bridge_pb2.ErrorDetail:
    """The ErrorDetail of a failed call (fails the test when there is none)."""
    metadata = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    raw = metadata.get(ERROR_KEY)
    assert raw is not None, f"no {ERROR_KEY} in the trailing metadata of {error!r}"
    return bridge_pb2.ErrorDetail.FromString(raw)


@dataclass
class Client:
    """A channel and stubs to one bridge, with value-level helpers."""

    socket_path: str
    channel: grpc.Channel = field(init=False)
    stub: bridge_pb2_grpc.BridgeStub = field(init=False)
    health: health_pb2_grpc.HealthStub = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(f"unix:{self.socket_path}")
        self.stub = bridge_pb2_grpc.BridgeStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def request(self, command: str, args: Any = None, **fields: Any) -> bridge_pb2.ExecuteRequest:
        return bridge_pb2.ExecuteRequest(
            command=command, args=payload({} if args is None else args), **fields
        )

    def execute(self, command: str, args: Any = None, *, timeout: float = 10.0, **fields: Any) -> Any:
        """Execute and decode the result (raises grpc.RpcError on an error status)."""
        response = self.stub.Execute(self.request(command, args, **fields), timeout=timeout)
        return unpayload(response.result)

    def execute_raw(self, command: str, raw: bridge_pb2.Payload, *, timeout: float = 10.0) -> Any:
        response = self.stub.Execute(bridge_pb2.ExecuteRequest(command=command, args=raw), timeout=timeout)
        return unpayload(response.result)

    def fail(
        self, command: str, args: Any = None, *, raw: bridge_pb2.Payload | None = None, **fields: Any
    ) -> Any:
        """Execute a call that must fail; return (status code, ErrorDetail)."""
        request = (
            self.request(command, args, **fields)
            if raw is None
            else bridge_pb2.ExecuteRequest(command=command, args=raw, **fields)
        )
        try:
            result = self.stub.Execute(request, timeout=10.0)
        except grpc.RpcError as error:
            return error.code(), error_detail(error)  # type: ignore[attr-defined]
        raise AssertionError(f"{command} succeeded with {unpayload(result.result)!r}; an error was expected")

    def messages(
        self, command: str, args: Any = None, *, timeout: float = 30.0, **fields: Any
    ) -> list[list[Any]]:
        """Run a stream to its end: one list of decoded chunks per gRPC message."""
        call = self.stub.ExecuteStream(self.request(command, args, **fields), timeout=timeout)
        return [[unpayload(chunk) for chunk in message.chunks] for message in call]

    def chunks(self, command: str, args: Any = None, **fields: Any) -> list[Any]:
        return [chunk for message in self.messages(command, args, **fields) for chunk in message]

    def serving(self) -> bool:
        try:
            reply = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class BridgeProcess:
    """One bridge subprocess; its stderr goes to a file that failures quote."""

    argv: Sequence[str]
    socket_path: str
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] = field(init=False)
    log_path: Path = field(init=False)

    def start(self) -> BridgeProcess:
        fd, name = tempfile.mkstemp(prefix="bridge-", suffix=".log")
        self.log_path = Path(name)
        with os.fdopen(fd, "wb") as log:
            self.process = subprocess.Popen(
                list(self.argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_serving(self, timeout: float = START_TIMEOUT) -> Client:
        client = Client(self.socket_path)

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"bridge exited with {self.process.returncode} before SERVING:\n{self.log()}"
                )
            return os.path.exists(self.socket_path) and client.serving()

        try:
            wait_for(ready, timeout, f"bridge {self.argv} to report SERVING")
        except BaseException:
            client.close()
            raise
        return client

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal the bridge and wait for its exit code (SIGKILL and fail if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"bridge did not exit within {timeout}s of signal {sig}:\n{self.log()}"
            ) from None

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log_path.unlink(missing_ok=True)


def new_socket_path() -> str:
    """A socket path in a fresh private (0700) directory, short enough for AF_UNIX."""
    directory = tempfile.mkdtemp(prefix="sp-")
    os.chmod(directory, 0o700)
    return os.path.join(directory, "b.sock")


def remove_socket_dir(socket_path: str) -> None:
    path = Path(socket_path)
    path.unlink(missing_ok=True)
    path.parent.rmdir()


def json_payload(raw: bytes) -> bridge_pb2.Payload:
    """A payload with exactly these JSON bytes (may be invalid on purpose)."""
    return bridge_pb2.Payload(json=raw)


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def descendants() -> Iterator[psutil.Process]:
    """Live children of the test process, except those kept for the whole run (the test Redis)."""
    for proc in psutil.Process().children(recursive=True):
        if proc.pid not in LONG_LIVED:
            yield proc


#: launch(extra_args=None) -> (process, client): a private bridge for one test.
Launch = Callable[..., tuple[BridgeProcess, Client]]


class ContractHooks:
    """How the suite launches a bridge; a language's subclass overrides these."""

    #: What Describe and info report as the language.
    language: ClassVar[str] = ""
    #: The remote type of compute's division by zero.
    zero_division_type: ClassVar[str] = "ZeroDivisionError"
    #: --max-message-bytes given to every bridge of the suite.
    max_message_bytes: ClassVar[int] = 4 * 1024 * 1024

    # -- how to launch (override) --------------------------------------------

    def bridge_command(self) -> list[str]:
        """The bridge's executable and fixed arguments (before the common flags)."""
        raise NotImplementedError

    def bridge_env(self) -> dict[str, str] | None:
        """Environment of the bridge (None: inherit)."""
        return None

    def extra_args(self) -> list[str]:
        """More arguments for the shared (class-wide) bridge."""
        return []

    def bridge_argv(self, socket_path: str, parent_pid: int | str) -> list[str]:
        """The full argv; ``parent_pid`` may be a placeholder string the launcher fills in."""
        return [
            *self.bridge_command(),
            "--socket",
            socket_path,
            "--parent-pid",
            str(parent_pid),
            "--run-id",
            "contract",
            "--max-message-bytes",
            str(self.max_message_bytes),
        ]

"""The bridge contract: one suite every bridge language passes.

Subclass :class:`BridgeContract` as ``TestXxxBridge`` and say how to launch
your bridge (:meth:`~.common.ContractHooks.bridge_command`, or the whole
:meth:`~.common.ContractHooks.bridge_argv`); the tests speak only gRPC to it.
The tests live in four mixins: ``contract_unary``, ``contract_batch``,
``contract_streams`` and ``contract_lifecycle``.

What a bridge must offer besides the protocol (the showcase handler):
``ping`` -> {"status": "ok"}; ``echo`` -> {"echoed": args}; ``compute``
(operation, a, b) -> {"result": r}, ints stay ints when exact, dividing by
zero is a COMMAND_ERROR of ``zero_division_type``;
``info`` -> pid, language, runtime_version, uptime, requests_handled,
streams_closed, streams_cancelled, sessions_active, sessions_started,
sessions_ended; ``random`` (type uniform/integer/normal) -> {"value"};
``sleep`` (seconds, stops early on cancel); ``set_counter`` / ``get_counter``
/ ``increment_counter`` -> {"value"} in the session state, seeded from
InitSession data {"counter": n}; stream commands ``ping_stream`` (count,
interval; count <= 0 runs until cancelled; chunks seq/is_final),
``batch_inference``, ``process_large_dataset``, ``tail_and_analyze``,
``distributed_training``; every stream's last chunk has is_final true.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from testprocs import LONG_LIVED

from .common import BridgeProcess, Client, Launch, descendants, gone, new_socket_path, remove_socket_dir
from .contract_batch import BatchContract
from .contract_lifecycle import SessionLifecycleContract
from .contract_streams import StreamContract
from .contract_unary import UnaryContract

__all__ = ["LONG_LIVED", "BridgeContract", "Launch"]


class BridgeContract(UnaryContract, BatchContract, StreamContract, SessionLifecycleContract):
    """The shared tests; a subclass names the bridge to run them against."""

    # -- fixtures -------------------------------------------------------------

    def _launch(self, extra: list[str] | None = None) -> tuple[BridgeProcess, Client]:
        socket_path = new_socket_path()
        argv = self.bridge_argv(socket_path, os.getpid()) + (extra or [])
        proc = BridgeProcess(argv, socket_path, self.bridge_env()).start()
        try:
            client = proc.wait_serving()
        except BaseException:
            proc.cleanup()
            remove_socket_dir(socket_path)
            raise
        return proc, client

    @staticmethod
    def _finish(proc: BridgeProcess, client: Client) -> None:
        client.close()
        try:
            if proc.process.poll() is None:
                code = proc.stop()
                assert code == 0, f"bridge exited with {code} on SIGTERM:\n{proc.log()}"
            assert gone(proc.pid)
            assert not os.path.exists(proc.socket_path), "the bridge left its socket file behind"
        finally:
            proc.cleanup()
            remove_socket_dir(proc.socket_path)

    @pytest.fixture(scope="class")
    @classmethod
    def shared(cls) -> Iterator[tuple[BridgeProcess, Client]]:
        """One bridge for every test of the class that does not stop it."""
        contract = cls()
        proc, client = contract._launch(contract.extra_args())
        LONG_LIVED.add(proc.pid)
        try:
            yield proc, client
        finally:
            LONG_LIVED.discard(proc.pid)
            contract._finish(proc, client)
            assert not list(descendants()), "a process of the bridge outlived it"

    @pytest.fixture
    def client(self, shared: tuple[BridgeProcess, Client]) -> Client:
        proc, client = shared
        assert proc.process.poll() is None, f"the shared bridge died:\n{proc.log()}"
        return client

    @pytest.fixture
    def launch(self) -> Iterator[Launch]:
        """Start a private bridge (for tests that stop or kill it); all are ended after the test."""
        started: list[tuple[BridgeProcess, Client]] = []

        def start(extra: list[str] | None = None) -> tuple[BridgeProcess, Client]:
            started.append(self._launch(extra))
            return started[-1]

        yield start
        for proc, client in started:
            self._finish(proc, client)

"""The contract's batch tests: ExecuteBatch runs many calls of one command in one message."""

from __future__ import annotations

import threading
from typing import Any

import grpc
from snakepit_bridge._proto import bridge_pb2

from .common import Client, ContractHooks, Kind, error_detail, json_payload, payload, unpayload, wait_for


def batch_request(command: str, items: list[Any], **fields: Any) -> bridge_pb2.ExecuteBatchRequest:
    """A batch request; an item that is already a Payload goes as it is (raw bytes on purpose)."""
    return bridge_pb2.ExecuteBatchRequest(
        command=command,
        items=[item if isinstance(item, bridge_pb2.Payload) else payload(item) for item in items],
        **fields,
    )


def run_batch(client: Client, command: str, items: list[Any], **fields: Any) -> list[bridge_pb2.ItemResult]:
    reply = client.stub.ExecuteBatch(batch_request(command, items, **fields), timeout=30)
    return list(reply.results)


def values(results: list[bridge_pb2.ItemResult]) -> list[Any]:
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return [unpayload(r.result) for r in results]


class BatchContract(ContractHooks):
    def test_batch_results_in_order_with_types_intact(self, client: Client) -> None:
        items = [{"n": n, "f": n / 4, "none": None, "blob": bytes([n % 256]) * n} for n in range(100)]
        echoed = [value["echoed"] for value in values(run_batch(client, "echo", items))]
        assert echoed == items
        assert all(type(e["n"]) is int and type(e["blob"]) is bytes for e in echoed)
        sums = values(run_batch(client, "compute", [{"operation": "add", "a": n, "b": 1} for n in range(50)]))
        assert [s["result"] for s in sums] == list(range(1, 51))

    def test_empty_batch(self, client: Client) -> None:
        assert run_batch(client, "ping", []) == []

    def test_per_item_errors_carry_kind_type_and_message(self, client: Client) -> None:
        items = [
            {"operation": "divide", "a": 1, "b": 1},
            {"operation": "divide", "a": 1, "b": 0},
            {"operation": "modulo", "a": 1, "b": 2},
            {"operation": "add", "a": 2, "b": 2},
        ]
        results = run_batch(client, "compute", items)
        assert [r.ok for r in results] == [True, False, False, True]
        assert unpayload(results[3].result)["result"] == 4
        zero = results[1].error
        assert (zero.kind, zero.type) == (Kind.COMMAND_ERROR, self.zero_division_type)
        assert zero.message and zero.traceback
        bad = results[2].error
        assert bad.kind == Kind.INVALID_ARGUMENTS and "modulo" in bad.message

    def test_stop_on_error_runs_nothing_after_the_first_failure(self, client: Client) -> None:
        client.execute("set_counter", {"value": 0}, session_id="stop-on-error")
        items: list[Any] = [{"by": 1}, {"by": 1}, {"by": "x", "bogus": 1}, {"by": 1}, {"by": 1}]
        results = run_batch(
            client, "increment_counter", items, session_id="stop-on-error", stop_on_error=True
        )
        assert [r.ok for r in results] == [True, True, False]
        assert results[2].error.kind == Kind.INVALID_ARGUMENTS
        # The items after the failure never ran.
        assert client.execute("get_counter", {}, session_id="stop-on-error") == {"value": 2}
        client.stub.EndSession(bridge_pb2.EndSessionRequest(session_id="stop-on-error"), timeout=5)

    def test_unknown_or_stream_command_fails_the_whole_call(self, client: Client) -> None:
        for command, code, kind in (
            ("no_such_command", grpc.StatusCode.NOT_FOUND, Kind.UNKNOWN_COMMAND),
            ("ping_stream", grpc.StatusCode.INVALID_ARGUMENT, Kind.INVALID_ARGUMENTS),
        ):
            try:
                run_batch(client, command, [{}, {}])
            except grpc.RpcError as error:
                assert error.code() == code, command  # type: ignore[attr-defined]
                detail = error_detail(error)
                assert detail.kind == kind and command in detail.message
            else:
                raise AssertionError(f"a batch of {command!r} succeeded")
        assert client.execute("ping")["status"] == "ok"

    def test_invalid_arguments_of_one_item_leave_the_others_alone(self, client: Client) -> None:
        items = [
            {"operation": "add", "a": 1, "b": 1},
            json_payload(b"{not json"),
            json_payload(b"[1, 2]"),
            {"operation": "add", "a": 1, "b": 2, "bogus": 3},
            {"operation": "add", "a": 1, "b": 3},
        ]
        results = run_batch(client, "compute", items)
        assert [r.ok for r in results] == [True, False, False, False, True]
        assert all(r.error.kind == Kind.INVALID_ARGUMENTS for r in results[1:4])
        assert "bogus" in results[3].error.message
        assert [unpayload(results[i].result)["result"] for i in (0, 4)] == [2, 4]

    def test_a_batch_sees_and_changes_session_state(self, client: Client) -> None:
        client.execute("set_counter", {"value": 10}, session_id="batch-session")
        results = values(run_batch(client, "increment_counter", [{"by": 1}] * 5, session_id="batch-session"))
        assert [r["value"] for r in results] == [11, 12, 13, 14, 15]
        assert client.execute("get_counter", {}, session_id="batch-session") == {"value": 15}
        client.stub.EndSession(bridge_pb2.EndSessionRequest(session_id="batch-session"), timeout=5)

    def test_requests_handled_counts_items(self, client: Client) -> None:
        before = client.execute("info")["requests_handled"]
        run_batch(client, "ping", [{}] * 25)
        after = client.execute("info")["requests_handled"]
        # The two info calls count too (other tests do not run concurrently on this bridge).
        assert after - before == 25 + 1

    def test_a_large_response_stops_early_and_stays_in_order(self, client: Client) -> None:
        blob = 700 * 1024
        items = [{"i": i, "blob": bytes([i]) * blob} for i in range(5)]  # 3.5 MB: fits the request
        results = run_batch(client, "echo", items)
        assert 1 <= len(results) < len(items)
        echoed = [value["echoed"] for value in values(results)]
        assert echoed == items[: len(results)]

    def test_a_running_batch_is_one_active_call(self, client: Client) -> None:
        done = threading.Event()

        def work() -> None:
            try:
                run_batch(client, "sleep", [{"seconds": 0.3}] * 3)
            finally:
                done.set()

        thread = threading.Thread(target=work)
        thread.start()
        try:
            describe = lambda: client.stub.Describe(bridge_pb2.DescribeRequest(), timeout=5)  # noqa: E731
            assert wait_for(lambda: describe().active_calls == 1, 5, "the batch to be running")
            assert not done.is_set()
        finally:
            thread.join()
        assert wait_for(lambda: describe().active_calls == 0, 5, "the batch to end")

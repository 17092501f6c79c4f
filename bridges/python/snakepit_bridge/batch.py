"""ExecuteBatch: many calls of one command in one gRPC message.

A batch map's cost per item is dominated by the gRPC round trip (about half
a millisecond), not by the command. A batch pays it once for many items: the
items run here one after another through the very path of Execute (argument
binding, session state, soft deadline, error classification), each counted as
a request, and their outcomes go back in one response.

The response must fit the message limit: the bridge stops before the next
item once the results reach :data:`BUDGET_SHARE` of it (the caller sends the
rest again), and a result too large for the room left is that item's
PayloadTooLarge error, as an oversized Execute result is.
"""

from __future__ import annotations

import grpc

from snakepit_bridge._proto import bridge_pb2
from snakepit_bridge.calls import CallHold, CallRunner
from snakepit_bridge.commands import Failure

__all__ = ["BUDGET_SHARE", "ITEM_OVERHEAD", "run_batch"]

#: Share of the message limit after which no further item is started.
BUDGET_SHARE = 0.5
#: Bytes of protobuf framing counted per item result (tags and lengths).
ITEM_OVERHEAD = 16


def run_batch(
    runner: CallRunner,
    request: bridge_pb2.ExecuteBatchRequest,
    context: grpc.ServicerContext,
    call: CallHold,
) -> bridge_pb2.ExecuteBatchResponse:
    """Run every item of ``request`` in order; their outcomes, one per item run.

    Raises:
        Failure: the command is unknown or a stream command (the whole call fails).
    """
    cmd = runner.unary_command(request.command)
    limit = runner.max_message_bytes
    budget = int(limit * BUDGET_SHARE)
    what = f"the result of command {cmd.name!r}"
    results: list[bridge_pb2.ItemResult] = []
    used = 0
    stats = runner.stats
    for item in request.items:
        if used >= budget or runner.stopping.is_set() or not context.is_active():
            break  # the rest is sent again (or the caller is gone, or so is the bridge)
        stats.requests += 1
        try:
            kwargs = runner.bind_args(cmd, item)
            value = runner.invoke(cmd, kwargs, runner.call_context(request, context), context, call)
            payload, size = runner.encode(value, what)
            if used + size + ITEM_OVERHEAD > limit:
                raise Failure(
                    "COMMAND_ERROR",
                    "PayloadTooLarge",
                    f"{what} is {size} bytes; with the results before it in this batch it is over "
                    f"the limit of {limit} bytes",
                )
            outcome = bridge_pb2.ItemResult(ok=True, result=payload)
        except Failure as failure:
            outcome = bridge_pb2.ItemResult(ok=False, error=runner.detail(failure))
            size = outcome.ByteSize()
        used += size + ITEM_OVERHEAD
        results.append(outcome)
        if request.stop_on_error and not outcome.ok:
            break
    return bridge_pb2.ExecuteBatchResponse(results=results)

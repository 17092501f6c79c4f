"""The floor of ``benchmarks/celery_overhead.py``: a bridge-shaped gRPC server that does nothing.

It serves ``Execute`` of snakepit's Bridge service on a Unix socket and answers
every call with the same constant reply, the size of the showcase ``ping``'s,
on the gRPC settings of a Python bridge (a thread pool of handlers, the same
core experiments). No snakepit code runs in it: a Celery task calling it once
costs what any Celery task costs that makes one gRPC call to another process,
which is the part of ``execute("ping")`` that no code of ours can remove.

    python benchmarks/handlers/grpc_floor.py SOCKET_PATH

Prints ``serving`` once it accepts calls; stops on SIGTERM or when its parent
exits (so a killed benchmark leaves nothing running).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from concurrent import futures

import grpc
from snakepit_bridge._proto import bridge_pb2, bridge_pb2_grpc
from snakepit_bridge.parentwatch import watch_parent
from snakepit_bridge.server import DEFAULT_MAX_WORKERS

#: What the showcase ``ping`` answers, give or take the digits of its pid and time.
REPLY = bridge_pb2.ExecuteResponse(
    result=bridge_pb2.Payload(
        json=b'{"status":"ok","message":"pong","pid":12345,"timestamp":1795878384.41553,"session_id":null}'
    )
)


class ConstantBridge(bridge_pb2_grpc.BridgeServicer):  # type: ignore[misc]
    def Execute(
        self, request: bridge_pb2.ExecuteRequest, context: grpc.ServicerContext
    ) -> bridge_pb2.ExecuteResponse:
        return REPLY


def main(socket_path: str) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=DEFAULT_MAX_WORKERS), options=[("grpc.so_reuseport", 0)]
    )
    bridge_pb2_grpc.add_BridgeServicer_to_server(ConstantBridge(), server)
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    watch_parent(os.getppid(), stop.set)
    print("serving", flush=True)
    stop.wait()
    server.stop(0).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""The floor's gRPC part in ``benchmarks/payloads.py``: a bridge-shaped server that echoes.

It serves ``Execute`` of snakepit's Bridge service on a Unix socket and answers
every call with its arguments as they came (JSON and raw blobs), on the gRPC
settings of a Python bridge. No snakepit code runs in it: one call of it is
what moving the bytes to another process and back over gRPC costs.

    python benchmarks/handlers/grpc_echo.py SOCKET_PATH

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

#: Largest message either way: the benchmark sends up to 50 MiB.
LIMIT = 256 * 1024 * 1024


class EchoBridge(bridge_pb2_grpc.BridgeServicer):  # type: ignore[misc]
    def Execute(
        self, request: bridge_pb2.ExecuteRequest, context: grpc.ServicerContext
    ) -> bridge_pb2.ExecuteResponse:
        return bridge_pb2.ExecuteResponse(result=request.args)


def main(socket_path: str) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.max_send_message_length", LIMIT),
        ("grpc.max_receive_message_length", LIMIT),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=DEFAULT_MAX_WORKERS), options=options)
    bridge_pb2_grpc.add_BridgeServicer_to_server(EchoBridge(), server)
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    watch_parent(os.getppid(), stop.set)
    print("serving", flush=True)
    stop.wait()
    server.stop(0).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

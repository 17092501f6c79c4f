"""``python -m snakepit_bridge.zygote``: the ``preload`` start method.

One zygote per pool imports gRPC, the bridge server and the handler's module
once, then forks a ready-to-serve bridge whenever the pool asks. A bridge
forked this way skips every import (seconds for an ML stack), so a pool of 16
starts, and a crashed bridge is back, in a fraction of the spawn time.

NOTE: no gRPC object (channel, server, completion queue, thread) may exist in
the zygote before it forks: gRPC's core cannot cross a fork once started. The
zygote only *imports*; everything gRPC is created by ``serve()`` in the child.
The zygote stays single-threaded for the same reason (a fork copies only the
forking thread, and a lock held by another one would stay locked forever).

Control protocol: JSON lines. The pool writes ``{"op": "fork", "id": N,
"socket": PATH}`` on the zygote's stdin; the zygote answers on its stdout
``{"op": "forked", "id": N, "pid": PID}``, and reports every child exit as
``{"op": "exited", "pid": PID, "status": RETURNCODE}`` the moment it reaps it,
so the pool learns of a death at once. ``{"op": "ready", "pid": PID}`` is the
first line, after the imports. End of stdin (the pool closed it, or the
worker died) or the worker's exit (``--parent-pid``): the zygote SIGKILLs its
remaining children, reaps them and exits; each child also has the kernel's
parent-death signal set to SIGKILL, and watches the worker's pid itself.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from snakepit_bridge.loader import DEFAULT_HANDLER, AdapterError, load_handler

__all__ = ["main"]

_PR_SET_PDEATHSIG = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snakepit-bridge-zygote", description="Fork preloaded bridges.")
    parser.add_argument("--adapter", "--handler", dest="adapter", default=DEFAULT_HANDLER)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--max-message-bytes", type=int, default=None)
    parser.add_argument("--allow-module", action="append", default=[])
    return parser


class Zygote:
    """The zygote's state: its control pipes, its children, its wake-up pipe."""

    def __init__(self, bridge_argv: list[str], parent_pid: int | None) -> None:
        self.bridge_argv = bridge_argv
        self.parent_pid = parent_pid
        self.children: set[int] = set()
        self.buffer = b""
        # Our stdout is the control channel: keep a private copy of it and point
        # fd 1 at stderr, so a stray print() of an imported module cannot garble it.
        self.out_fd = os.dup(1)
        os.dup2(2, 1)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: None)  # woken by the wake-up fd; handled below
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.terminated = False
        self.parent_fd = -1
        if parent_pid:
            try:
                self.parent_fd = os.pidfd_open(parent_pid)
            except ProcessLookupError:
                self.terminated = True

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.out_fd, data) :]
        except BrokenPipeError:
            self.terminated = True

    def fork(self, request_id: Any, socket_path: str) -> None:
        if not isinstance(socket_path, str) or not socket_path:
            self.send({"op": "error", "id": request_id, "error": f"bad socket path {socket_path!r}"})
            return
        pid = os.fork()
        if pid == 0:
            self._child(socket_path)  # never returns
        self.children.add(pid)
        self.send({"op": "forked", "id": request_id, "pid": pid})

    def _child(self, socket_path: str) -> None:
        code = 1
        try:
            zygote_pid = os.getppid()
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != zygote_pid:  # the zygote died between fork and prctl
                os._exit(1)
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            for fd in (self.out_fd, self.wake_r, self.wake_w, self.parent_fd):
                if fd >= 0:
                    os.close(fd)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            from snakepit_bridge.cli import main as bridge_main

            bridge_main([*self.bridge_argv, "--socket", socket_path])  # exits the process
        except BaseException:
            traceback.print_exc()
        os._exit(code)

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.send({"op": "exited", "pid": pid, "status": os.waitstatus_to_exitcode(status)})

    def handle_input(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            try:
                message = json.loads(line)
                op = message["op"]
            except (ValueError, KeyError, TypeError):
                self.send({"op": "error", "id": None, "error": f"bad control line {line[:200]!r}"})
                continue
            if op == "fork":
                self.fork(message.get("id"), message.get("socket"))
            elif op == "exit":
                self.terminated = True
            else:
                self.send({"op": "error", "id": message.get("id"), "error": f"unknown op {op!r}"})

    def run(self) -> int:
        poller = select.poll()
        poller.register(0, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        if self.parent_fd >= 0:
            poller.register(self.parent_fd, select.POLLIN)
        self.send({"op": "ready", "pid": os.getpid()})
        while not self.terminated:
            for fd, _ in poller.poll():
                if fd == 0:
                    data = os.read(0, 65536)
                    if not data:
                        self.terminated = True  # the pool closed the pipe or the worker died
                    self.handle_input(data)
                elif fd == self.wake_r:
                    try:
                        signals = os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        signals = b""
                    if signal.SIGTERM in signals:
                        self.terminated = True
                    self.reap()
                elif fd == self.parent_fd:
                    self.terminated = True
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        """SIGKILL the children still running and reap them all."""
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while self.children and time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.children.discard(pid)
            self.send({"op": "exited", "pid": pid, "status": os.waitstatus_to_exitcode(status)})


def main(argv: Sequence[str] | None = None) -> None:
    args, extra = _parser().parse_known_args(argv)
    try:
        load_handler(args.adapter)  # import the handler's module (and its heavy imports) once
    except AdapterError as exc:
        print(f"snakepit-bridge-zygote: error: {exc}", file=sys.stderr)
        os._exit(2)
    # Imports only: the server module pulls in grpc and grpc_health.
    import snakepit_bridge.cli
    import snakepit_bridge.server  # noqa: F401

    bridge_argv = ["--adapter", args.adapter, *extra]
    if args.parent_pid:
        bridge_argv += ["--parent-pid", str(args.parent_pid)]
    if args.run_id:
        bridge_argv += ["--run-id", args.run_id]
    if args.max_message_bytes:
        bridge_argv += ["--max-message-bytes", str(args.max_message_bytes)]
    for module in args.allow_module:
        bridge_argv += ["--allow-module", module]
    code = Zygote(bridge_argv, args.parent_pid).run()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()

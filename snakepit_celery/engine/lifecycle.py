"""The life of a pool's bridges: start, watch, replace, stop, reap.

Each of the pool's ``size`` slots always has a bridge on the way: a start
thread launches it (spawn, or fork from the zygote), waits for SERVING and
only then offers the slot to callers. The supervisor thread hears of every
exit through a pidfd; an idle slot whose bridge died is replaced at once, a
busy one when its caller lets go (its call failed the moment the socket
closed). A replacement bumps the slot's generation, so a start that belongs
to an older generation is discarded. The supervisor learns of a death a
little after it happens (it has to be scheduled, and reap); a slot found
dead at hand-off in that window is replaced by the checkout itself
(``_replace_dead``), so it is never handed to a caller. Failed starts are
retried with a backoff until the pool closes.

Everything a process leaves behind is accounted for: a record file per
process in the run directory (for the sweep of a later run), removed when
the supervisor reaps it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from snakepit_celery.config import PoolConfig
from snakepit_celery.engine.adapters import resolve_adapter
from snakepit_celery.engine.adapters.base import max_message_bytes
from snakepit_celery.engine.bridge import Bridge, spawn_process
from snakepit_celery.engine.checkout import Slot, SlotQueue
from snakepit_celery.engine.preload import Zygote
from snakepit_celery.engine.process import ProcessHandle, describe_status
from snakepit_celery.engine.runrecord import forget_process, record_process
from snakepit_celery.engine.supervisor import Supervisor
from snakepit_celery.engine.telemetry import Telemetry
from snakepit_celery.errors import BridgeStartError, ConfigurationError, PoolClosed, SnakepitError

__all__ = ["PoolLifecycle", "failure_reason"]

#: Bytes in a Unix socket's path: sun_path holds 108, the last one a NUL.
_SOCKET_PATH_MAX = 107
#: What a socket's file name adds to its run dir in the short form that
#: ``_socket_path`` falls back on: "/<8 digits>.<slot>.<generation>.sock",
#: given up to 10,000 slots and a million restarts of one.
_SOCKET_NAME_ROOM = len("/12345678.1234.123456.sock")


def _check_socket_room(run_dir: Path) -> None:
    """Refuse a run dir too deep for its bridges' sockets, before any bridge starts.

    Otherwise every bridge would fail to bind and the pool would report only
    that none could start.

    Raises:
        ConfigurationError: names ``run_dir`` and the sizes.
    """
    size = len(str(run_dir).encode())
    if size + _SOCKET_NAME_ROOM > _SOCKET_PATH_MAX:
        raise ConfigurationError(
            f"run_dir: the bridges' sockets would be in {str(run_dir)!r} ({size} bytes), too deep "
            f"for a Unix socket path of at most {_SOCKET_PATH_MAX} bytes with the file name "
            f"(room for {_SOCKET_PATH_MAX - _SOCKET_NAME_ROOM} bytes of directory); set run_dir "
            "(SNAKEPIT_RUN_DIR) to a shorter directory"
        )


log = logging.getLogger("snakepit_celery.pool")

#: First and largest pause between failed starts of a slot's bridge.
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0


def failure_reason(exc: BaseException) -> str:
    """What went wrong, for a message: our errors say it; any other names its class too."""
    if isinstance(exc, SnakepitError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class PoolLifecycle:
    """Slots, their bridges and the threads that keep them running."""

    def __init__(
        self, config: PoolConfig, *, run_dir: Path, run_id: str, telemetry: Telemetry | None = None
    ) -> None:
        self.config = config
        self.name = config.name
        self.adapter = resolve_adapter(config.adapter)
        self.language = self.adapter.language
        if config.start_method == "preload" and not self.adapter.supports_preload:
            raise ConfigurationError(
                f"pools.{config.name}.start_method: 'preload' needs an adapter that supports it; "
                f"{config.adapter!r} does not (use 'spawn')"
            )
        self.run_dir = Path(run_dir)
        _check_socket_room(self.run_dir)
        self.run_id = run_id
        self.telemetry = telemetry or Telemetry()
        self._lock = threading.Lock()
        #: Notified whenever a slot becomes serving, is released or a bridge exits.
        self._changed = threading.Condition(self._lock)
        self._queue = SlotQueue(
            self._lock,
            pool=self.name,
            max_queue=config.max_queue,
            queue_timeout=config.queue_timeout,
            on_dead=self._replace_dead,
        )
        self._slots = [Slot(i) for i in range(config.size)]
        #: Every process of this pool not yet reaped, by pid.
        self._bridges: dict[int, Bridge] = {}
        self._supervisor = Supervisor(self.name)
        self._zygote: Zygote | None = None
        self._zygote_lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._first_error: dict[int, BaseException | None] = {}
        self._started = False
        self._closed = False
        self._closing = threading.Event()
        self._parent_pid = os.getpid()
        self._message_limit = max_message_bytes(config)
        self._restarts = 0

    # -- launching -----------------------------------------------------------

    def _socket_path(self, slot: Slot) -> str:
        path = str(self.run_dir / f"{self.name}.{slot.index}.{slot.gen}.sock")
        if len(path.encode()) > _SOCKET_PATH_MAX:
            path = str(self.run_dir / f"{abs(hash(self.name)) % 10**8}.{slot.index}.{slot.gen}.sock")
        return path

    def _ensure_zygote(self) -> Zygote:
        with self._zygote_lock:
            zygote = self._zygote
            if zygote is not None and zygote.alive:
                return zygote
            if zygote is not None:
                zygote.close(0.0)
                if zygote.pid:
                    forget_process(self.run_dir, zygote.pid)
            if self._closed:
                raise PoolClosed(f"pool {self.name!r} is closed")
            spec = self.adapter.preload(self.config, run_id=self.run_id, parent_pid=self._parent_pid)
            zygote = Zygote(spec, pool=self.name)
            took = zygote.start(self.config.startup_timeout)
            assert zygote.pid is not None
            record_process(self.run_dir, zygote.pid, run_id=self.run_id, kind="zygote")
            log.info("pool %s: zygote pid %d ready in %.3fs", self.name, zygote.pid, took)
            self._zygote = zygote
            return zygote

    def _launch(self, slot: Slot) -> Bridge:
        path = self._socket_path(slot)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        process: ProcessHandle
        if self.config.start_method == "preload":
            process = self._ensure_zygote().fork(path, self.config.startup_timeout)
        else:
            spec = self.adapter.launch(
                self.config, socket_path=path, run_id=self.run_id, parent_pid=self._parent_pid
            )
            process = spawn_process(spec)
        bridge = Bridge(process, socket_path=path, max_message_bytes=self._message_limit)
        bridge.slot = slot
        with self._lock:
            self._bridges[bridge.pid] = bridge
            closed = self._closed
        try:
            try:
                if closed:
                    raise PoolClosed(f"pool {self.name!r} is closed")
                record_process(self.run_dir, bridge.pid, run_id=self.run_id, kind="bridge")
            finally:
                # NOTE: after the record (the supervisor's reaping removes it), and
                # whatever happened, so a process that is started is always reaped.
                self._supervisor.watch(process, lambda: self._on_exit(bridge))
        except BaseException:
            bridge.exit_reason = bridge.exit_reason or "failed to start"
            bridge.kill()
            raise
        return bridge

    def _start_slot(self, slot: Slot, gen: int) -> None:
        """Thread body: get a serving bridge into ``slot`` (generation ``gen``).

        Any failure, expected or not, goes the same way: the first one is
        ``start()``'s answer, and the start is retried with a backoff. A thread
        that ended on an unexpected error would leave its slot starting forever.
        """
        delay = _BACKOFF_FIRST
        while True:
            with self._lock:
                if self._closed or slot.gen != gen:
                    return
            bridge: Bridge | None = None
            try:
                bridge = self._launch(slot)
                startup = bridge.wait_serving(time.monotonic() + self.config.startup_timeout)
            except Exception as exc:
                if bridge is not None:
                    bridge.exit_reason = bridge.exit_reason or "failed to start"
                    bridge.kill()
                with self._lock:
                    if self._closed or slot.gen != gen:
                        return
                    if self._first_error.get(slot.index, 0) is None:
                        self._first_error[slot.index] = exc
                        self._changed.notify_all()
                # An error none of our parts raises on purpose gets its traceback, once.
                unexpected = not isinstance(exc, SnakepitError) and delay == _BACKOFF_FIRST
                log.warning(
                    "pool %s: slot %d: %s; retrying in %.1fs",
                    self.name,
                    slot.index,
                    failure_reason(exc),
                    delay,
                    exc_info=exc if unexpected else None,
                )
                if self._closing.wait(delay):
                    return
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            with self._lock:
                if self._closed or slot.gen != gen or bridge.exited:
                    stale = True
                else:
                    stale = False
                    slot.bridge = bridge
                    self._first_error.pop(slot.index, None)
                    self._queue.offer(slot)
                    self._changed.notify_all()
            if stale:
                bridge.exit_reason = "discarded (pool closed or slot replaced)"
                bridge.kill()
                return
            log.debug("pool %s: bridge pid %d serving in %.3fs", self.name, bridge.pid, startup)
            self.telemetry.bridge_started(pool=self.name, pid=bridge.pid, startup_time=startup)
            return

    def _spawn_start(self, slot: Slot) -> None:
        """Start a thread that brings ``slot`` (at its current generation) up. Lock held."""
        gen = slot.gen
        self._spawn_thread(f"snakepit-start-{self.name}-{slot.index}", lambda: self._start_slot(slot, gen))

    def _spawn_thread(self, name: str, body: Callable[[], None]) -> None:
        """Run ``body`` on a thread that :meth:`close` waits for. Lock held.

        ``body`` must end soon after ``_closing`` is set.
        """

        def run() -> None:
            try:
                body()
            finally:
                with self._lock:
                    self._threads.discard(thread)

        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads.add(thread)
        thread.start()

    # -- replacing -----------------------------------------------------------

    def _retire(self, bridge: Bridge, *, kill: bool) -> None:
        """Stop a bridge that left its slot: SIGKILL, or SIGTERM then SIGKILL after the grace."""
        if bridge.exited:
            return
        if kill:
            bridge.kill()
        else:
            bridge.terminate()
            self._supervisor.escalate(bridge.process, self.config.shutdown_grace)

    def _replace_locked(self, slot: Slot, old: Bridge | None, reason: str, *, kill: bool) -> None:
        """Retire ``old`` and start a new bridge in ``slot``. Lock held."""
        slot.state = "starting"
        slot.bridge = None
        slot.gen += 1
        slot.recycle = False
        if old is not None:
            # A process that already died keeps its own status as the reason.
            if old.exit_reason is None and not old.process.has_exited():
                old.exit_reason = reason
            self._retire(old, kill=kill)
        self._restarts += 1
        log.info(
            "pool %s: replacing bridge pid %s of slot %d: %s", self.name, old and old.pid, slot.index, reason
        )
        self._spawn_start(slot)

    def _replace_dead(self, slot: Slot) -> None:
        """Checkout callback (lock held): ``slot``'s bridge was found dead at hand-off."""
        self._replace_locked(slot, slot.bridge, "found dead at checkout", kill=True)

    def _on_exit(self, bridge: Bridge) -> None:
        """Supervisor callback: ``bridge``'s process has exited."""
        status = bridge.process.reap()
        reason = bridge.exit_reason or describe_status(status)
        bridge.exited = True  # NOTE: before the lock, so a releasing caller sees it
        forget_process(self.run_dir, bridge.pid)
        with self._lock:
            self._bridges.pop(bridge.pid, None)
            slot = bridge.slot
            if slot.bridge is bridge and not self._closed and slot.state == "idle":
                self._queue.discard_idle(slot)
                self._replace_locked(slot, bridge, reason, kill=False)
            # A busy slot is replaced by its caller, whose call has just failed.
            self._changed.notify_all()
        bridge.close_channel()
        self.telemetry.bridge_exited(pool=self.name, pid=bridge.pid, reason=reason)

    # -- start and close -------------------------------------------------------

    def start(self) -> None:
        """Start every bridge concurrently; return once all report SERVING.

        Slots whose first start failed keep retrying in the background when
        at least one bridge is serving.

        Raises:
            BridgeStartError: no bridge could be started (the pool is closed again).
        """
        with self._lock:
            if self._started:
                return
            self._started = True
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        self._supervisor.start()
        try:
            if self.config.start_method == "preload":
                self._ensure_zygote()
        except SnakepitError:
            self.close(0.0)
            raise
        except Exception as exc:
            self.close(0.0)
            raise BridgeStartError(
                f"pool {self.name!r}: the zygote could not be started: {failure_reason(exc)}"
            ) from exc
        deadline = time.monotonic() + self.config.startup_timeout + 5.0
        with self._lock:
            for slot in self._slots:
                self._first_error[slot.index] = None
                self._spawn_start(slot)
            while True:
                waiting = [
                    s for s in self._slots if s.bridge is None and self._first_error.get(s.index) is None
                ]
                remaining = deadline - time.monotonic()
                if not waiting or remaining <= 0:
                    break
                self._changed.wait(remaining)
            failed = {i: e for i, e in self._first_error.items() if e is not None}
            serving = sum(1 for s in self._slots if s.bridge is not None)
            self._first_error.clear()
        first = next(iter(failed.values()), None)
        if serving == 0:
            self.close(0.0)
            why = failure_reason(first) if first is not None else "none reported SERVING in time"
            raise BridgeStartError(f"pool {self.name!r}: no bridge could be started: {why}") from first
        if first is not None:
            log.warning(
                "pool %s: %d of %d bridges failed to start and are retried: %s",
                self.name,
                len(failed),
                len(self._slots),
                failure_reason(first),
            )

    def close(self, grace: float | None = None) -> None:
        """Stop every bridge: SIGTERM, SIGKILL after ``grace`` seconds, reap all.

        Calls still waiting get ``PoolClosed``; running ones end with their bridge.
        """
        grace = self.config.shutdown_grace if grace is None else grace
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.close(PoolClosed, f"pool {self.name!r} is closed")
            for slot in self._slots:
                slot.state = "closed"
                slot.gen += 1
            bridges = list(self._bridges.values())
            self._changed.notify_all()
        self._closing.set()
        for bridge in bridges:
            bridge.exit_reason = bridge.exit_reason or "pool closed"
            bridge.terminate()
        deadline = time.monotonic() + grace
        for bridge in bridges:
            if not bridge.process.has_exited(max(0.0, deadline - time.monotonic())):
                bridge.kill()
        for thread in list(self._threads):
            thread.join(self.config.startup_timeout + 5.0)
        with self._lock:
            bridges += [b for b in self._bridges.values() if b not in bridges]
        for bridge in bridges:
            bridge.kill()
            bridge.process.has_exited(5.0)
            bridge.close_channel()
        if self._zygote is not None:
            self._zygote.close(grace)
            if self._zygote.pid:
                forget_process(self.run_dir, self._zygote.pid)
        for bridge in bridges:
            bridge.process.reap()
        self._supervisor.stop()
        for bridge in bridges:
            bridge.process.close()
            forget_process(self.run_dir, bridge.pid)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(bridge.socket_path)

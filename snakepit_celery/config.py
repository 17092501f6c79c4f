"""Configuration: frozen, keyword-only dataclasses validated when built.

Only the ``from_*`` constructors read files or the environment, so a config
object is a plain value that can be compared, logged and passed to a worker.
A bad value raises :class:`~snakepit_celery.errors.ConfigurationError` naming
the field, at start, before any bridge or queue exists.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snakepit_celery.errors import ConfigurationError

__all__ = [
    "DEFAULT_CANCEL_GRACE",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_METRICS_ADDR",
    "DEFAULT_PAYLOAD_REF_THRESHOLD",
    "DEFAULT_PAYLOAD_REF_TTL",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_QUEUE_PREFIX",
    "DEFAULT_QUEUE_TIMEOUT",
    "DEFAULT_SHUTDOWN_GRACE",
    "DEFAULT_STARTUP_TIMEOUT",
    "PoolConfig",
    "SnakepitConfig",
]

#: Bridges per pool when not set: one per CPU, as the seed does.
DEFAULT_POOL_SIZE = os.cpu_count() or 2
#: Seconds a call may wait for a free bridge before ``QueueTimeout``.
DEFAULT_QUEUE_TIMEOUT = 30.0
#: Calls that may wait for a bridge at once before ``PoolSaturated``.
DEFAULT_MAX_QUEUE = 1000
#: Seconds a bridge has to report SERVING before ``BridgeStartError``.
DEFAULT_STARTUP_TIMEOUT = 20.0
#: Seconds between SIGTERM and SIGKILL when a bridge is stopped.
DEFAULT_SHUTDOWN_GRACE = 5.0
#: Seconds a cancelled stream's command has to end before its bridge is replaced.
DEFAULT_CANCEL_GRACE = 2.0
#: Largest argument or result document, in bytes (JSON plus binary values).
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
#: Prefix of every queue name and Redis key the library makes.
DEFAULT_QUEUE_PREFIX = "snakepit"
#: Address of the opt-in Prometheus endpoint: loopback unless the operator opens it.
DEFAULT_METRICS_ADDR = "127.0.0.1"
#: A ``bytes`` value larger than this travels through the snakepit Redis, not the messages.
DEFAULT_PAYLOAD_REF_THRESHOLD = 256 * 1024
#: Seconds a stored payload waits to be read before Redis drops it.
DEFAULT_PAYLOAD_REF_TTL = 3600

#: Pool names and prefixes become queue names and Redis keys.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
START_METHODS = ("spawn", "preload")


def _check(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise ConfigurationError(f"{field_name}: {message}")


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    """One named pool of bridges of one adapter.

    Attributes are validated on construction; times are in seconds, and a
    limit of 0 means "no limit".
    """

    #: The pool's name: its queue is ``<prefix>.pool.<name>``.
    name: str = "python"
    #: ``python``, ``node``, ``ruby`` or ``module:Class`` of an Adapter.
    adapter: str = "python"
    #: How many bridges the pool keeps running.
    size: int = DEFAULT_POOL_SIZE
    #: ``spawn`` (one fresh process each) or ``preload`` (fork from a zygote
    #: that imported the handler once; Python only).
    start_method: str = "spawn"
    #: The handler the bridge serves (``module:Class`` for Python, a file for
    #: Node.js/Ruby); None means the adapter's showcase handler.
    handler: str | None = None
    #: The interpreter or executable to run (another virtualenv's python, say).
    executable: str | None = None
    #: Extra command-line arguments for the bridge.
    args: tuple[str, ...] = ()
    #: Extra environment variables for the bridge.
    env: Mapping[str, str] = field(default_factory=dict)
    #: Working directory of the bridge.
    cwd: str | None = None
    #: Seconds a bridge has to report SERVING.
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    #: Seconds a call may wait for a free bridge.
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT
    #: Calls that may wait at once; one more is ``PoolSaturated``.
    max_queue: int = DEFAULT_MAX_QUEUE
    #: Default hard timeout of one call; past it the bridge is killed.
    timeout: float = 0.0
    #: Hard timeouts per command, overriding ``timeout``.
    command_timeouts: Mapping[str, float] = field(default_factory=dict)
    #: Recycle a bridge after this many calls.
    max_requests: int = 0
    #: Recycle a bridge whose resident memory passes this many MiB.
    max_memory_mb: int = 0
    #: Largest arguments or result in bytes.
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    #: Seconds between SIGTERM and SIGKILL on stop.
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    #: Seconds a stream closed before its end has for its command to stop (the
    #: bridge's Describe reports no running call); the bridge stays borrowed
    #: meanwhile, and past this it is killed and replaced. 0: at the first look.
    cancel_grace: float = DEFAULT_CANCEL_GRACE
    #: Modules the generic Python call API may import (none by default).
    allowed_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(bool(NAME_RE.match(self.name)), "name", f"{self.name!r} must match {NAME_RE.pattern}")
        _check(bool(self.adapter), "adapter", "must not be empty")
        _check(isinstance(self.size, int) and self.size >= 1, "size", f"{self.size!r} must be >= 1")
        _check(
            self.start_method in START_METHODS,
            "start_method",
            f"{self.start_method!r} is not one of {', '.join(START_METHODS)}",
        )
        for name in ("startup_timeout", "queue_timeout", "timeout", "shutdown_grace", "cancel_grace"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and value >= 0, name, f"{value!r} must be >= 0")
        _check(self.startup_timeout > 0, "startup_timeout", "must be > 0")
        for name in ("max_queue", "max_requests", "max_memory_mb"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 0, name, f"{value!r} must be an int >= 0")
        _check(self.max_payload_bytes > 0, "max_payload_bytes", "must be > 0")
        for command, limit in self.command_timeouts.items():
            _check(
                isinstance(limit, (int, float)) and limit > 0,
                f"command_timeouts.{command}",
                f"{limit!r} must be > 0",
            )
        # Freeze the mutable inputs so the config stays a value.
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "env", dict(self.env))
        object.__setattr__(self, "command_timeouts", dict(self.command_timeouts))
        object.__setattr__(self, "allowed_modules", tuple(self.allowed_modules))

    def hard_timeout(self, command: str, requested: float | None = None) -> float:
        """The hard limit of one call: the caller's, else the command's, else the pool's.

        Returns 0.0 for "no limit".
        """
        if requested:
            return float(requested)
        return float(self.command_timeouts.get(command, self.timeout))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "pool") -> PoolConfig:
        """Build from a mapping (a TOML table), refusing unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(
                f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values = dict(data)
        for seq in ("args", "allowed_modules"):
            if seq in values:
                values[seq] = tuple(values[seq])
        try:
            return cls(**values)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}.{exc.message}") from None
        except TypeError as exc:  # pragma: no cover - guarded by the unknown-key check
            raise ConfigurationError(f"{where}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class SnakepitConfig:
    """Everything one worker hosts: its pools and the services it uses."""

    #: The pools this worker hosts; the first is the default.
    pools: tuple[PoolConfig, ...] = (PoolConfig(),)
    #: Redis for sessions and streams; None means "the app's backend/broker".
    redis_url: str | None = None
    #: Prefix of queue names and Redis keys.
    queue_prefix: str = DEFAULT_QUEUE_PREFIX
    #: Parent of the private (0700) run directories; None means a temp dir.
    #: Keep it short: the bridges' Unix socket paths below it must fit in 107
    #: bytes, so a worker refuses a base much longer than about 50 bytes.
    run_dir: str | None = None
    #: Broker of the ready-made app and the CLI; ``install()`` uses it only as a
    #: default under the app's own setting.
    broker_url: str | None = None
    #: Result backend, likewise; None means "the broker's, when that is Redis".
    result_backend: str | None = None
    #: Port of the worker's Prometheus endpoint; None: no endpoint, 0: any free port (logged).
    metrics_port: int | None = None
    #: Address the Prometheus endpoint listens on.
    metrics_addr: str = DEFAULT_METRICS_ADDR
    #: A ``bytes`` value (in a call's arguments or a task's result) larger than this
    #: many bytes is stored once in the snakepit Redis and the message or result
    #: carries a reference to it (:mod:`snakepit_celery.payloads`); 0: never.
    payload_ref_threshold: int = DEFAULT_PAYLOAD_REF_THRESHOLD
    #: Seconds a stored payload is kept when nobody reads it (read, it is deleted).
    payload_ref_ttl: int = DEFAULT_PAYLOAD_REF_TTL

    def __post_init__(self) -> None:
        object.__setattr__(self, "pools", tuple(self.pools))
        _check(len(self.pools) > 0, "pools", "at least one pool is needed")
        names = [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        _check(not dupes, "pools", f"duplicate pool name(s): {', '.join(dupes)}")
        _check(
            bool(NAME_RE.match(self.queue_prefix)),
            "queue_prefix",
            f"{self.queue_prefix!r} must match {NAME_RE.pattern}",
        )
        port = self.metrics_port
        _check(
            port is None or (type(port) is int and 0 <= port <= 65535),
            "metrics_port",
            f"{port!r} must be a port number (0-65535) or unset",
        )
        _check(bool(self.metrics_addr), "metrics_addr", "must not be empty")
        threshold = self.payload_ref_threshold
        _check(
            type(threshold) is int and threshold >= 0,
            "payload_ref_threshold",
            f"{threshold!r} must be a whole number of bytes >= 0 (0: never by reference)",
        )
        ttl = self.payload_ref_ttl
        _check(
            type(ttl) is int and ttl > 0, "payload_ref_ttl", f"{ttl!r} must be a whole number of seconds > 0"
        )

    @property
    def total_bridges(self) -> int:
        """Bridges of all pools together: the worker needs at least as many threads."""
        return sum(p.size for p in self.pools)

    def queue_name(self, pool: str) -> str:
        """The Celery queue of pool ``pool``: ``<queue_prefix>.pool.<pool>``.

        Raises:
            ConfigurationError: ``pool`` is unfit for a queue name.
        """
        _check(
            isinstance(pool, str) and bool(NAME_RE.match(pool)),
            "pool",
            f"{pool!r} must match {NAME_RE.pattern}",
        )
        return f"{self.queue_prefix}.pool.{pool}"

    @property
    def default_pool(self) -> str:
        """The pool that ``execute`` uses when no ``pool=`` is given."""
        return self.pools[0].name

    def pool(self, name: str) -> PoolConfig:
        """The pool named ``name``; ``ConfigurationError`` if there is none."""
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise ConfigurationError(
            f"pool: no pool named {name!r}; this config has {', '.join(p.name for p in self.pools)}"
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "config") -> SnakepitConfig:
        """Build from a mapping shaped like a config file.

        ``pools`` is a table of tables keyed by pool name (TOML ``[pools.node]``)
        or a list of tables each with a ``name``.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(
                f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {k: v for k, v in data.items() if k != "pools"}
        raw_pools = data.get("pools")
        if raw_pools is not None:
            if isinstance(raw_pools, Mapping):
                items = [{"name": name, **table} for name, table in raw_pools.items()]
            else:
                items = list(raw_pools)
            values["pools"] = tuple(
                PoolConfig.from_mapping(item, where=f"pools.{item.get('name', i)}")
                for i, item in enumerate(items)
            )
        try:
            return cls(**values)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}.{exc.message}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SnakepitConfig:
        """Read a TOML config file (see ``worker_configs/``)."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigurationError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"config file {p} is not valid TOML: {exc}") from None
        return cls.from_mapping(data, where=str(p))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SnakepitConfig:
        """The config a worker uses: ``SNAKEPIT_CONFIG`` (a file) if set, then
        ``SNAKEPIT_*`` overrides: ``REDIS_URL``, ``QUEUE_PREFIX``, ``RUN_DIR``,
        ``BROKER_URL``, ``RESULT_BACKEND``, ``METRICS_PORT``, ``METRICS_ADDR``,
        ``PAYLOAD_REF_THRESHOLD``, ``PAYLOAD_REF_TTL``, and ``POOL_SIZE`` /
        ``START_METHOD`` applied to every pool.
        """
        env = os.environ if environ is None else environ
        base = cls.from_file(env["SNAKEPIT_CONFIG"]) if env.get("SNAKEPIT_CONFIG") else cls()
        changes: dict[str, Any] = {}
        if env.get("SNAKEPIT_REDIS_URL"):
            changes["redis_url"] = env["SNAKEPIT_REDIS_URL"]
        if env.get("SNAKEPIT_QUEUE_PREFIX"):
            changes["queue_prefix"] = env["SNAKEPIT_QUEUE_PREFIX"]
        if env.get("SNAKEPIT_RUN_DIR"):
            changes["run_dir"] = env["SNAKEPIT_RUN_DIR"]
        if env.get("SNAKEPIT_BROKER_URL"):
            changes["broker_url"] = env["SNAKEPIT_BROKER_URL"]
        if env.get("SNAKEPIT_RESULT_BACKEND"):
            changes["result_backend"] = env["SNAKEPIT_RESULT_BACKEND"]
        if env.get("SNAKEPIT_METRICS_PORT"):
            raw = env["SNAKEPIT_METRICS_PORT"]
            _check(raw.isdigit(), "SNAKEPIT_METRICS_PORT", f"{raw!r} is not a port number")
            changes["metrics_port"] = int(raw)
        if env.get("SNAKEPIT_METRICS_ADDR"):
            changes["metrics_addr"] = env["SNAKEPIT_METRICS_ADDR"]
        for name in ("payload_ref_threshold", "payload_ref_ttl"):
            variable = f"SNAKEPIT_{name.upper()}"
            if env.get(variable):
                raw = env[variable]
                _check(raw.isdigit(), variable, f"{raw!r} is not a whole number")
                changes[name] = int(raw)
        pool_changes: dict[str, Any] = {}
        if env.get("SNAKEPIT_POOL_SIZE"):
            raw = env["SNAKEPIT_POOL_SIZE"]
            _check(raw.isdigit(), "SNAKEPIT_POOL_SIZE", f"{raw!r} is not a whole number")
            pool_changes["size"] = int(raw)
        if env.get("SNAKEPIT_START_METHOD"):
            pool_changes["start_method"] = env["SNAKEPIT_START_METHOD"]
        if pool_changes:
            changes["pools"] = tuple(dataclasses.replace(p, **pool_changes) for p in base.pools)
        return dataclasses.replace(base, **changes) if changes else base

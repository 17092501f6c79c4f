"""compose/docker-compose.yml: it parses, and everything it names exists in this repository.

No Docker engine runs here, so the file is checked the way a reviewer would:
every service has a health check; every build context, Dockerfile and target
exists; every path copied into an image exists; every command resolves to a
console script or module of this repository with valid arguments; every
worker config it names loads; every ``depends_on`` names a service. Paths
under ``/app`` in a container are this repository (``COPY . /app``).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from snakepit_celery.cli import _parser as snakepit_cli_parser
from snakepit_celery.config import SnakepitConfig

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
#: Where the Dockerfile puts the repository in the image.
APP = "/app"
#: The stack the issue asks for.
REQUIRED = {"redis", "rabbitmq", "worker-python", "worker-polyglot", "flower", "web"}
#: Executables that come from the images' base (redis, rabbitmq) rather than this repository.
IMAGE_TOOLS = {"redis-server", "redis-cli", "rabbitmq-diagnostics"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def _argv(value: Any) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _repo_path(container_path: str, working_dir: str = APP) -> Path:
    """The repository file a container path stands for."""
    path = container_path if container_path.startswith("/") else f"{working_dir}/{container_path}"
    assert path == APP or path.startswith(APP + "/"), f"{container_path} is outside {APP}"
    return REPO / path[len(APP) + 1 :]


def _console_scripts() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return set(project.get("scripts", {}))


def _dockerfile(service: dict[str, Any]) -> tuple[Path, Path]:
    build = service["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    return context, context / build.get("dockerfile", "Dockerfile")


def test_the_stack_has_every_service_with_a_health_check(compose: dict[str, Any]) -> None:
    services = _services(compose)
    assert set(services) >= REQUIRED
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test, f"{name} has no health check"
        assert _argv(test)[0] in ("CMD", "CMD-SHELL"), f"{name}: health check {test!r}"
        for dep, cond in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert cond["condition"] == "service_healthy", f"{name} -> {dep}: {cond}"


def test_builds_name_existing_dockerfiles_targets_and_paths(compose: dict[str, Any]) -> None:
    built = [s for s in _services(compose).values() if "build" in s]
    assert len(built) >= 4
    for service in built:
        context, dockerfile = _dockerfile(service)
        assert context == REPO, "images are built from the repository root"
        assert dockerfile.is_file(), dockerfile
        text = dockerfile.read_text()
        targets = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.MULTILINE | re.IGNORECASE))
        assert service["build"]["target"] in targets
        for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.MULTILINE):
            *sources, _dest = line.split()
            for source in sources:
                assert (context / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
        for script in re.findall(r"^CMD\s+\[(.+)\]$", text, re.MULTILINE):
            argv = [a.strip().strip('"') for a in script.split(",")]
            if "--config" in argv:
                assert _repo_path(argv[argv.index("--config") + 1]).is_file()
    ignore = COMPOSE_DIR / "Dockerfile.dockerignore"
    assert ".venv" in ignore.read_text().split()  # the local virtualenv never enters an image


def _check_snakepit_cli(argv: list[str], env: dict[str, str], working_dir: str) -> None:
    ns, rest = snakepit_cli_parser().parse_known_args(argv[1:])
    if ns.config:
        config_file = _repo_path(ns.config, working_dir)
        assert config_file.is_file(), f"{ns.config} does not exist"
        config = SnakepitConfig.from_env({**env, "SNAKEPIT_CONFIG": str(config_file)})
        assert config.pools
        from snakepit_celery.engine.adapters import resolve_adapter

        for pool in config.pools:
            resolve_adapter(pool.adapter)  # a typo would raise, naming the alias
    if ns.command == "worker":
        assert "-n" in rest, "workers are named, so the health check can ping exactly them"


def _check_celery(argv: list[str], working_dir: str) -> None:
    assert argv[1] == "-A", argv
    app_module = argv[2].split(":")[0]
    candidates = [
        REPO / Path(*app_module.split(".")).with_suffix(".py"),
        REPO / Path(*app_module.split(".")) / "__init__.py",
        _repo_path(app_module.replace(".", "/") + ".py", working_dir),
        _repo_path(app_module.replace(".", "/"), working_dir) / "__init__.py",
    ]
    assert any(c.is_file() for c in candidates), f"celery -A {argv[2]}: no such module"
    assert argv[3] in ("worker", "flower", "inspect", "status"), argv


def _check_command(argv: list[str], env: dict[str, str], working_dir: str) -> None:
    tool = argv[0]
    if tool in IMAGE_TOOLS:
        return
    if tool in _console_scripts():
        _check_snakepit_cli(argv, env, working_dir)
    elif tool == "celery":
        _check_celery(argv, working_dir)
    elif tool == "python":
        if argv[1] == "-c":
            compile(argv[2], "<healthcheck>", "exec")
        else:
            assert _repo_path(argv[1], working_dir).is_file(), f"python {argv[1]}: no such file"
    elif tool == "flask":
        app = argv[argv.index("--app") + 1]
        assert _repo_path(f"{app}.py", working_dir).is_file(), f"flask --app {app}: no such file"
    else:
        pytest.fail(f"unknown executable {tool!r} in {argv}")


def test_every_command_and_config_exists(compose: dict[str, Any]) -> None:
    checked = 0
    for name, service in _services(compose).items():
        working_dir = service.get("working_dir", APP)
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        if "build" in service:
            assert _repo_path(working_dir).is_dir(), f"{name}: working_dir {working_dir}"
            SnakepitConfig.from_env(env)  # the SNAKEPIT_* variables are valid
        commands = []
        if "command" in service:
            commands.append(_argv(service["command"]))
        test = _argv(service["healthcheck"]["test"])
        if test[0] == "CMD-SHELL":
            commands.append(shlex.split(test[1].replace("$$", "$")))
        else:
            commands.append(test[1:])
        for argv in commands:
            _check_command(argv, env, working_dir)
            checked += 1
    assert checked >= 2 * len(REQUIRED)


def test_workers_expose_metrics_and_flower_needs_auth(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name in ("worker-python", "worker-polyglot"):
        env = services[name]["environment"]
        config = SnakepitConfig.from_env({k: str(v) for k, v in env.items()})
        assert config.metrics_port and config.metrics_addr == "0.0.0.0"
        assert any(str(config.metrics_port) in str(p) for p in services[name]["ports"])
    flower_env = services["flower"]["environment"]
    assert "FLOWER_BASIC_AUTH" in flower_env and "FLOWER_UNAUTHENTICATED_API" not in flower_env
    polyglot = SnakepitConfig.from_file(_repo_path("/app/worker_configs/polyglot.toml"))
    assert {"python", "node", "ruby"} <= {p.adapter for p in polyglot.pools}

"""The README's wheel install, run in a fresh virtualenv without the network.

The two wheels (``snakepit-bridge`` and ``snakepit-celery``) are built from a
copy of this checkout's sources and installed with ``pip install --no-index
--find-links``: the pin ``snakepit-bridge==0.1.0`` must be met by the wheel
beside it, and with the bridge's wheel absent the install must fail naming
it (why the README installs both). The third-party dependencies are not
downloaded: the fresh venv sees this run's installed ones through a ``.pth``
file (a folder of links to them, leaving out this project's own and pip's),
so pip finds them installed, as it would after downloading them. Then the
installed ``snakepit-celery demo`` runs from outside the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: What the two wheels are built from (copied, so no build/ lands in the checkout).
SOURCES = ("pyproject.toml", "README.md", "snakepit_celery", "bridges/python")
#: This project's own distributions and the installer's, which the fresh venv has or must get itself.
OWN = ("snakepit", "__editable__", "_snakepit", "pip", "setuptools", "wheel", "_distutils_hack", "distutils-")
IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "node_modules", ".venv")


def _run(argv: list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "SNAKEPIT_"))}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        target = src / name
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, target, ignore=IGNORE)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target)
    dist = tmp_path_factory.mktemp("dist")
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
            "-w", str(dist), "bridges/python", "."]  # fmt: skip
    out = _run(argv, src)
    assert out.returncode == 0, out.stdout + out.stderr
    return dist


def _fresh_venv(path: Path) -> Path:
    """A new venv that sees this run's third-party packages as installed; its python."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    deps = path.parent / f"{path.name}-deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(OWN) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "snakepit-test-deps.pth").write_text(f"{deps}\n")
    return python


def test_the_package_alone_is_refused_for_want_of_its_bridge(wheels: Path, tmp_path: Path) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    for wheel in wheels.glob("snakepit_celery-*.whl"):
        shutil.copy2(wheel, alone)
    python = _fresh_venv(tmp_path / "venv")
    out = _run(
        [str(python), "-m", "pip", "install", "--no-index", "--find-links", str(alone), "snakepit-celery"],
        tmp_path,
    )
    assert out.returncode != 0
    assert "snakepit-bridge==0.1.0" in out.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)  # a venv, an install and the demo on a loaded 2-core machine
def test_both_wheels_install_offline_and_the_demo_runs_from_them(wheels: Path, tmp_path: Path) -> None:
    python = _fresh_venv(tmp_path / "venv")
    argv = [
        str(python),
        "-m",
        "pip",
        "install",
        "--no-index",
        "--find-links",
        str(wheels),
        "snakepit-celery[embedded]",
    ]
    out = _run(argv, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    where = _run(
        [
            str(python),
            "-c",
            "import snakepit_celery, snakepit_bridge as b; print(snakepit_celery.__file__, b.__file__)",
        ],
        tmp_path,
    )
    assert where.returncode == 0, where.stderr
    assert str(ROOT) not in where.stdout and str(tmp_path / "venv") in where.stdout
    demo = _run([str(tmp_path / "venv" / "bin" / "snakepit-celery"), "demo"], tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "counter 1 -> 2 -> 3" in demo.stdout and "nothing left running" in demo.stdout

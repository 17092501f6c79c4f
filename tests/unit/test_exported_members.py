"""The public surface: ``snakepit_celery.__all__`` is complete, importable, and grouped in order."""

from __future__ import annotations

import ast
import builtins
import inspect
import subprocess
import sys
from pathlib import Path

import snakepit_celery
from snakepit_celery import errors

INIT = Path(snakepit_celery.__file__)


def _groups() -> list[list[str]]:
    """The names of ``__all__`` split at its comment lines, as written in the source."""
    lines = INIT.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("__all__"))
    groups: list[list[str]] = []
    for line in lines[start + 1 :]:
        stripped = line.strip()
        if stripped == "]":
            break
        if stripped.startswith("#"):
            groups.append([])
        elif stripped:
            groups[-1].append(ast.literal_eval(stripped.rstrip(",")))
    return groups


def test_all_is_grouped_by_comments_and_sorted_within_groups() -> None:
    groups = _groups()
    assert len(groups) >= 3
    for group in groups:
        assert group == sorted(group, key=lambda n: (not n[0].isupper(), n)), group
    assert [name for group in groups for name in group] == snakepit_celery.__all__


def test_every_exported_member_exists_and_none_twice() -> None:
    assert len(set(snakepit_celery.__all__)) == len(snakepit_celery.__all__)
    for name in snakepit_celery.__all__:
        assert hasattr(snakepit_celery, name), name


def test_every_public_member_is_exported() -> None:
    public = {
        name
        for name, value in vars(snakepit_celery).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("snakepit_celery")
        and not inspect.ismodule(value)
        and not hasattr(builtins, name)  # e.g. ``map``: importable by name, never by a star import
    }
    assert public <= set(snakepit_celery.__all__), public - set(snakepit_celery.__all__)


def test_every_error_is_exported() -> None:
    assert set(errors.__all__) <= set(snakepit_celery.__all__)


def test_importing_the_package_creates_no_celery_app() -> None:
    # A Django project brings its own app; only the submodule snakepit_celery.celery makes one.
    code = (
        "import sys, snakepit_celery; from celery import _state;"
        "print(len(list(_state._get_active_apps())), 'snakepit_celery.celery' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["0", "False"]

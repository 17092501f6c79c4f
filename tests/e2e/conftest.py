"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture
def chromium() -> str:
    found = shutil.which("chromium")
    if not found:
        reason = "Debian's chromium is not installed (make browser installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    return str(found)

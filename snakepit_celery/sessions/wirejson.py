"""kombu's JSON (as Celery's serializer: bytes and datetimes round-trip), typed."""

from __future__ import annotations

from typing import Any

from kombu.utils import json as _json

__all__ = ["dumps", "loads"]


def dumps(value: Any) -> str:
    return str(_json.dumps(value))  # type: ignore[no-untyped-call]


def loads(raw: bytes | str) -> Any:
    return _json.loads(raw)  # type: ignore[no-untyped-call]

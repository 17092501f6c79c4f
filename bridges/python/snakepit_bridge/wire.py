"""JSON with binary values beside it: the value encoding of the Bridge protocol.

JSON has no bytes, and pickle is never used. A ``bytes`` value is lifted out
of the document into ``Payload.blobs`` and replaced by the marker
``{"__snakepit_bytes__": <index>}``. A dict that really consists of one of the
marker keys, ``{key: value}``, is sent as ``{"__snakepit_escape__": [key, value]}``
so it survives (a list, so that decoders restoring inner objects first never
mistake it for a marker).
Both sides of the wire (and every bridge language) follow the same rule; see
``protos/snakepit/bridge/v1/bridge.proto``.

The common case (no bytes, no marker keys) goes through the C JSON encoder
and decoder once, with no Python-level walk of the value.
"""

from __future__ import annotations

import json
from typing import Any

BYTES_KEY = "__snakepit_bytes__"
ESCAPE_KEY = "__snakepit_escape__"
_MARKERS = (BYTES_KEY, ESCAPE_KEY)
_MARKER_PREFIX = b'"__snakepit_'

__all__ = ["BYTES_KEY", "ESCAPE_KEY", "WireError", "decode", "encode"]


class WireError(ValueError):
    """A value cannot be encoded as JSON, or a payload is not valid JSON."""


def _lift(value: Any, blobs: list[bytes]) -> Any:
    """Slow path: walk the value, lifting bytes and escaping marker dicts."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        blobs.append(bytes(value))
        return {BYTES_KEY: len(blobs) - 1}
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in _MARKERS:
            ((key, item),) = value.items()
            return {ESCAPE_KEY: [key, _lift(item, blobs)]}
        return {key: _lift(item, blobs) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lift(item, blobs) for item in value]
    return value


def _refuse(value: Any) -> Any:
    raise TypeError(f"a value of type {type(value).__name__} is not JSON serializable")


def _fast_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise _NeedsWalk
    return _refuse(value)


class _NeedsWalk(Exception):
    pass


def encode(value: Any) -> tuple[bytes, list[bytes]]:
    """Encode ``value`` as (JSON bytes, blobs).

    Raises:
        WireError: the value holds something JSON cannot carry (a set, an
            object, NaN), naming its type.
    """
    try:
        try:
            text = json.dumps(
                value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_fast_default
            )
        except _NeedsWalk:
            text = None
        if text is not None and '"__snakepit_' not in text:
            return text.encode(), []
        blobs: list[bytes] = []
        lifted = _lift(value, blobs)
        text = json.dumps(lifted, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_refuse)
        return text.encode(), blobs
    except (TypeError, ValueError) as exc:
        raise WireError(f"cannot encode as JSON: {exc}") from None


def _restore(obj: dict[str, Any], blobs: list[bytes]) -> Any:
    if len(obj) == 1:
        if BYTES_KEY in obj:
            index = obj[BYTES_KEY]
            if type(index) is not int or not 0 <= index < len(blobs):  # bool is no index
                raise WireError(f"bytes marker points at blob {index!r}, but there are {len(blobs)}")
            return blobs[index]
        if ESCAPE_KEY in obj:
            pair = obj[ESCAPE_KEY]
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
                raise WireError(f"escape marker must hold [key, value], not {pair!r}")
            return {pair[0]: pair[1]}
    return obj


def decode(data: bytes, blobs: list[bytes] | None = None) -> Any:
    """Decode (JSON bytes, blobs) back to the value; empty JSON means None.

    Raises:
        WireError: the JSON is not valid or a marker is broken.
    """
    if not data:
        return None
    blob_list = list(blobs or ())
    try:
        if _MARKER_PREFIX not in data:
            return json.loads(data)
        return json.loads(data, object_hook=lambda obj: _restore(obj, blob_list))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"payload is not valid JSON: {exc}") from None

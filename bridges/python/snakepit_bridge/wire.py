"""JSON with binary values beside it: the value encoding of the Bridge protocol.

JSON has no bytes, and pickle is never used. A ``bytes`` value is lifted out
of the document into ``Payload.blobs`` and replaced by the marker
``{"__snakepit_bytes__": <index>}``. A dict that really consists of one of the
marker keys, ``{key: value}``, is sent as ``{"__snakepit_escape__": [key, value]}``
so it survives (a list, so that decoders restoring inner objects first never
mistake it for a marker).
An n-dimensional array of numbers (a numpy array, or an :class:`NDArray`)
travels as its raw little-endian buffer in a blob, described by
``{"__snakepit_array__": {"dtype": "<f4", "shape": [2, 3], "blob": <index>}}``
(``dtype`` in numpy's notation: byte order, kind ``b i u f c``, item size);
it decodes to a read-only numpy array where numpy is installed, else to an
:class:`NDArray`. Never a JSON list of numbers.
Both sides of the wire (and every bridge language) follow the same rule; see
``protos/snakepit/bridge/v1/bridge.proto`` and ``docs/custom-bridge.md``.

The common case (no bytes, no marker keys) goes through the C JSON encoder
and decoder once, with no Python-level walk of the value.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

BYTES_KEY = "__snakepit_bytes__"
ESCAPE_KEY = "__snakepit_escape__"
ARRAY_KEY = "__snakepit_array__"
_MARKERS = (BYTES_KEY, ESCAPE_KEY, ARRAY_KEY)
_MARKER_PREFIX = b'"__snakepit_'
#: The dtypes an array may have on the wire: little-endian (or one byte) bool, int, uint, float, complex.
DTYPE_RE = re.compile(r"^(?:\|[bui]1|<[iu][248]|<f[248]|<c(?:8|16))$")

__all__ = ["ARRAY_KEY", "BYTES_KEY", "ESCAPE_KEY", "NDArray", "WireError", "decode", "encode"]


class WireError(ValueError):
    """A value cannot be encoded as JSON, or a payload is not valid JSON."""


@dataclass(frozen=True)
class NDArray:
    """An array as the wire carries it, where numpy is not installed.

    ``data`` is the raw little-endian buffer, ``dtype`` numpy's name of its
    items (``"<f4"``: 4-byte float), ``shape`` its dimensions. Pass one to a
    bridge as you would a numpy array; ``numpy.frombuffer(a.data, a.dtype).reshape(a.shape)``
    makes it one.
    """

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        _check_array(self.dtype, list(self.shape), len(self.data))


def _check_array(dtype: Any, shape: Any, size: int) -> None:
    if not (isinstance(dtype, str) and DTYPE_RE.match(dtype)):
        raise WireError(f"array dtype {dtype!r} is not one the wire carries (little-endian b, i, u, f, c)")
    if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
        raise WireError(f"array shape {shape!r} must be a list of sizes")
    expected = math.prod(shape) * int(dtype[2:])
    if expected != size:
        raise WireError(f"array of dtype {dtype} and shape {shape} needs {expected} bytes, not {size}")


def is_numpy_array(value: Any) -> bool:
    """Whether ``value`` is a numpy array (numpy is never imported to tell)."""
    numpy = sys.modules.get("numpy")  # a value can only be an array if numpy is loaded
    return numpy is not None and isinstance(value, numpy.ndarray)


def _lift_array(value: Any, blobs: list[bytes]) -> dict[str, Any]:
    if isinstance(value, NDArray):
        dtype, shape, data = value.dtype, list(value.shape), value.data
    else:
        import numpy

        kind = value.dtype.kind
        if kind not in "biufc" or value.dtype.fields is not None:
            raise TypeError(f"a numpy array of dtype {value.dtype} (the wire carries arrays of numbers)")
        little = value.dtype.newbyteorder("<")
        array = numpy.ascontiguousarray(value, dtype=little)
        dtype, shape, data = array.dtype.str, list(array.shape), array.tobytes()
    blobs.append(data)
    return {ARRAY_KEY: {"dtype": dtype, "shape": shape, "blob": len(blobs) - 1}}


def _lift(value: Any, blobs: list[bytes]) -> Any:
    """Slow path: walk the value, lifting bytes and escaping marker dicts."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        blobs.append(bytes(value))
        return {BYTES_KEY: len(blobs) - 1}
    if isinstance(value, NDArray) or is_numpy_array(value):
        return _lift_array(value, blobs)
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
    if isinstance(value, (bytes, bytearray, memoryview, NDArray)) or is_numpy_array(value):
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
        if ARRAY_KEY in obj:
            return _restore_array(obj[ARRAY_KEY], blobs)
    return obj


def _restore_array(spec: Any, blobs: list[bytes]) -> Any:
    if not (isinstance(spec, dict) and set(spec) == {"dtype", "shape", "blob"}):
        raise WireError(f"array marker must hold dtype, shape and blob, not {spec!r}")
    index = spec["blob"]
    if type(index) is not int or not 0 <= index < len(blobs):
        raise WireError(f"array marker points at blob {index!r}, but there are {len(blobs)}")
    dtype, shape, data = spec["dtype"], spec["shape"], blobs[index]
    _check_array(dtype, shape, len(data))
    try:
        import numpy
    except ImportError:
        return NDArray(dtype, tuple(shape), data)
    return numpy.frombuffer(data, dtype=dtype).reshape(shape)


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

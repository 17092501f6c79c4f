"""Arrays of numbers in task messages and results: raw bytes with dtype and shape.

A numpy array (or a :class:`snakepit_bridge.wire.NDArray`, its numpy-less
form) in a call's arguments or a result is written as
``{"__type__": "snakepit_ndarray", "__value__": [dtype, shape, data]}``, where
``data`` is its little-endian buffer as ``bytes``: so a big one goes by
reference like any big ``bytes`` (see :mod:`.codec`), never as a JSON list of
numbers. The worker needs no numpy: it hands an :class:`NDArray` on to the
bridge, which receives the buffer as raw gRPC bytes (``docs/custom-bridge.md``).
A process with numpy decodes one to a read-only ``numpy.ndarray``.
"""

from __future__ import annotations

from typing import Any

from kombu.utils import json as kombu_json
from snakepit_bridge.wire import NDArray, WireError, is_numpy_array

__all__ = ["MARKER", "PendingArray", "build", "encode_array"]

MARKER = "snakepit_ndarray"


class PendingArray:
    """An array whose buffer still waits in the snakepit Redis (a ``PayloadRef``)."""

    __slots__ = ("dtype", "ref", "shape")

    def __init__(self, dtype: str, shape: list[int], ref: Any) -> None:
        self.dtype, self.shape, self.ref = dtype, shape, ref


def build(dtype: Any, shape: Any, data: bytes) -> Any:
    """The array: numpy's where numpy is installed, else an :class:`NDArray`.

    Raises:
        WireError: the dtype is not one the wire carries, or the sizes disagree.
    """
    array = NDArray(dtype, tuple(shape) if isinstance(shape, list) else shape, data)
    try:
        import numpy
    except ImportError:
        return array
    return numpy.frombuffer(array.data, dtype=array.dtype).reshape(array.shape)


def encode_array(value: Any) -> dict[str, Any] | None:
    """The JSON form of an array (its bytes still to encode), None if ``value`` is none."""
    if isinstance(value, NDArray):
        return _envelope(value.dtype, list(value.shape), value.data)
    if not is_numpy_array(value):
        return None
    import numpy

    if value.dtype.kind not in "biufc" or value.dtype.fields is not None:
        raise WireError(f"a numpy array of dtype {value.dtype} cannot be sent (arrays of numbers only)")
    array = numpy.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
    return _envelope(array.dtype.str, list(array.shape), array.tobytes())


def _envelope(dtype: str, shape: list[int], data: bytes) -> dict[str, Any]:
    return {"__type__": MARKER, "__value__": [dtype, shape, data]}


def _decode(value: Any) -> Any:
    dtype, shape, data = value
    if isinstance(data, (bytes, bytearray)):
        return build(dtype, shape, bytes(data))
    return PendingArray(dtype, shape, data)  # by reference: built once its bytes are fetched


# NDArray in any kombu JSON (plain ``json`` too); numpy arrays through snakepit's serializers.
kombu_json.register_type(NDArray, MARKER, lambda a: [a.dtype, list(a.shape), a.data], _decode)

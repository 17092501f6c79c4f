"""The value codec: JSON with binary values beside it (``snakepit_bridge.wire``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from snakepit_bridge import wire
from snakepit_bridge.wire import BYTES_KEY, ESCAPE_KEY, WireError, decode, encode

ROUND_TRIPS: list[Any] = [
    None,
    0,
    -1,
    2**70,
    1.5,
    -2.25e-9,
    True,
    False,
    "",
    'héllo ✓ 日本語 🐍 \u0000 "q" \\',
    [],
    {},
    [1, [2, [3, [None]]]],
    {"a": {"b": {"c": [True, None, 1.0]}}},
    b"",
    b"\x00\xff\x80",
    bytearray(b"ba"),
    {"data": b"\x01", "list": [b"x", {"y": b"z"}], "n": 1},
    # Dicts that look like the markers must survive as themselves.
    {BYTES_KEY: 0},
    {BYTES_KEY: "not an index"},
    {ESCAPE_KEY: ["k", "v"]},
    {ESCAPE_KEY: {BYTES_KEY: 1}},
    [{BYTES_KEY: b"bytes inside a marker lookalike"}],
    {BYTES_KEY: 0, "other": 1},
    {"deep": [{ESCAPE_KEY: [{BYTES_KEY: 3}]}]},
    # A string that contains the marker text is just a string.
    '"__snakepit_bytes__"',
    {"s": "__snakepit_bytes__"},
]


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=repr)
def test_round_trip(value: Any) -> None:
    data, blobs = encode(value)
    decoded = decode(data, blobs)
    expected = bytes(value) if isinstance(value, bytearray) else value
    assert decoded == expected
    assert type(decoded) is type(expected)


def test_tuples_become_lists() -> None:
    assert decode(*encode({"t": (1, (2, 3))})) == {"t": [1, [2, 3]]}


def test_plain_values_have_no_blobs_and_plain_json() -> None:
    data, blobs = encode({"a": [1, "x"]})
    assert blobs == []
    assert json.loads(data) == {"a": [1, "x"]}


def test_bytes_are_lifted_in_order() -> None:
    data, blobs = encode([b"first", {"k": b"second"}])
    assert blobs == [b"first", b"second"]
    assert json.loads(data) == [{BYTES_KEY: 0}, {"k": {BYTES_KEY: 1}}]


def test_empty_payload_is_none() -> None:
    assert decode(b"") is None
    assert decode(b"", []) is None


@pytest.mark.parametrize(
    ("value", "type_name"),
    [({1, 2}, "set"), ({"x": object()}, "object"), ([1, 2j], "complex"), ({"f": frozenset()}, "frozenset")],
)
def test_encode_error_names_the_type(value: Any, type_name: str) -> None:
    with pytest.raises(WireError, match=type_name):
        encode(value)


def test_encode_error_with_bytes_beside_names_the_type() -> None:
    with pytest.raises(WireError, match="set"):
        encode({"b": b"x", "s": {1}})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [float("-inf")]])
def test_non_finite_floats_are_refused(value: Any) -> None:
    with pytest.raises(WireError):
        encode(value)


def test_circular_value_is_refused() -> None:
    value: list[Any] = []
    value.append(value)
    with pytest.raises(WireError):
        encode(value)


@pytest.mark.parametrize(
    ("data", "blobs", "fragment"),
    [
        (b"{broken", [], "not valid JSON"),
        (b"\xff\xfe", [], "not valid JSON"),
        (b'{"__snakepit_bytes__": 2}', [b"only one"], "blob 2"),
        (b'{"__snakepit_bytes__": "x"}', [], "blob 'x'"),
        (b'{"__snakepit_bytes__": true}', [b"a", b"b"], "blob True"),
        (b'{"__snakepit_bytes__": -1}', [b"a"], "blob -1"),
        (b'{"__snakepit_escape__": "bad"}', [], "escape marker"),
        (b'{"__snakepit_escape__": [1, 2]}', [], "escape marker"),
    ],
)
def test_decode_errors_say_what_is_wrong(data: bytes, blobs: list[bytes], fragment: str) -> None:
    with pytest.raises(WireError, match=fragment):
        decode(data, blobs)


def test_numpy_arrays_travel_as_buffers_and_come_back_as_arrays() -> None:
    np = pytest.importorskip("numpy")
    big_endian = np.arange(12, dtype=">i4").reshape(3, 4)
    strided = np.arange(10, dtype=np.float64)[::2]
    data, blobs = wire.encode({"a": big_endian, "b": strided, "c": np.zeros((0, 2), dtype=np.uint8)})
    assert b"1,2,3" not in data and len(blobs) == 3  # buffers, never lists of numbers
    back = wire.decode(data, blobs)
    assert back["a"].dtype == np.dtype("<i4") and np.array_equal(back["a"], big_endian)
    assert np.array_equal(back["b"], strided) and back["c"].shape == (0, 2)
    assert not back["a"].flags.writeable  # a view of the received bytes
    with pytest.raises(wire.WireError, match="dtype <U1"):
        wire.encode({"text": np.array(["x"])})


def test_an_ndarray_without_numpy_is_checked_and_round_trips() -> None:
    array = wire.NDArray("<f4", (2,), b"\0" * 8)
    data, blobs = wire.encode([array])
    back = wire.decode(data, blobs)[0]  # a numpy array where numpy is installed, else an NDArray
    assert bytes(back.data) == b"\0" * 8 and tuple(back.shape) == (2,)
    with pytest.raises(wire.WireError, match="needs 8 bytes, not 3"):
        wire.NDArray("<f4", (2,), b"abc")
    with pytest.raises(wire.WireError, match="not one the wire carries"):
        wire.NDArray(">f4", (1,), b"abcd")
    with pytest.raises(wire.WireError, match="array marker points at blob 3"):
        wire.decode(b'{"__snakepit_array__":{"dtype":"<f4","shape":[1],"blob":3}}', [])

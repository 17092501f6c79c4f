"""Protobuf's wire format by hand, for the one message shape where it saves copies.

A ``Payload`` (``json`` and repeated ``blobs``) with big blobs is written and
read here rather than through Python protobuf, which copies a bytes field into
its message and again out of it. Both sides use it: the worker for its
``ExecuteRequest`` and the reply it reads (``snakepit_celery.engine.rpc``), the
Python bridge for the request it reads and the reply it writes
(:mod:`.rawexec`). The bytes are protobuf's own encoding, so any other
protobuf reader (the Node.js and Ruby bridges) reads them as usual.
"""

from __future__ import annotations

__all__ = ["fields", "payload_of", "read_varint", "varint", "wrapped_payload"]

_JSON, _BLOB = 1, 2  # Payload.json, Payload.blobs
_JSON_TAG = b"\x0a"  # field 1, length-delimited
_BLOB_TAG = b"\x12"  # field 2, length-delimited


def varint(n: int) -> bytes:
    """``n`` (not negative) as a base-128 varint."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it.

    Raises:
        ValueError: longer than 64 bits. IndexError: it runs past the end.
    """
    shift = value = 0
    while True:
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 64 bits")


def fields(view: memoryview) -> list[tuple[int, int, int, memoryview | None]]:
    """Each field of a message: (number, start, end, value), value the view of a
    length-delimited one (no copy), None for the others.

    Raises:
        ValueError, IndexError: not a well-formed message.
    """
    found, pos, end = [], 0, len(view)
    while pos < end:
        start = pos
        key, pos = read_varint(view, pos)
        number, kind = key >> 3, key & 7
        value = None
        if kind == 2:
            size, pos = read_varint(view, pos)
            if pos + size > end:
                raise ValueError("a field runs past the end of its message")
            value, pos = view[pos : pos + size], pos + size
        elif kind == 0:
            _, pos = read_varint(view, pos)
        elif kind in (1, 5):
            pos += 8 if kind == 1 else 4
        else:
            raise ValueError(f"unexpected wire type {kind}")
        if pos > end:
            raise ValueError("a field runs past the end of its message")
        found.append((number, start, pos, value))
    return found


def payload_of(view: memoryview) -> tuple[bytes, list[bytes]]:
    """The ``json`` and ``blobs`` of a ``Payload``'s wire bytes, each blob copied once.

    Raises:
        ValueError, IndexError: not a well-formed message.
    """
    data, blobs = b"", []
    for number, _, _, value in fields(view):
        if value is not None and number == _JSON:
            data = bytes(value)
        elif value is not None and number == _BLOB:
            blobs.append(bytes(value))
    return data, blobs


def wrapped_payload(tag: bytes, data: bytes, blobs: list[bytes]) -> list[bytes]:
    """The parts of a ``Payload(json=data, blobs=blobs)`` as the field ``tag`` of an outer
    message, to be joined (each blob appears once: the join is its only copy)."""
    parts = [_JSON_TAG, varint(len(data)), data]
    for blob in blobs:
        parts += (_BLOB_TAG, varint(len(blob)), blob)
    inner = sum(len(part) for part in parts)
    return [tag, varint(inner), *parts]

"""Protobuf wire bytes written by hand: for messages the Python library refuses to build
(nesting past its recursion limit) and for corrupt ones."""

from __future__ import annotations


def varint(n: int) -> bytes:
    n &= 2**64 - 1  # negative numbers go on the wire as their 64-bit two's complement
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def int_field(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)

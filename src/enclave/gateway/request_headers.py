"""A request's headers as one plain dict, built once, for the request steps' look-ups.

Starlette's ``Headers.get`` lowercases and encodes the name, then scans the raw header list
decoding values, on every look-up (a missing name raises ``KeyError`` inside ``Mapping.get``);
authentication alone made seven per request. The ASGI server hands names over lowercased
(ASGI's rule; uvicorn does), so a dict of them answers the same look-ups for lowercase names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def first_values(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """Name → value of its *first* occurrence, as ``Headers.get`` answers; decoded as latin-1
    (as Starlette decodes). Look names up in lowercase."""
    # Built from the end so that the first occurrence of a repeated name is written last. A
    # plain loop: the comprehension's own function call cost more than its body here.
    values: dict[str, str] = {}
    for name, value in reversed(raw):
        values[name.decode("latin-1")] = value.decode("latin-1")
    return values


def first_value(raw: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of ``name`` (lowercase bytes), as ``Headers.get`` answers it: for a
    single look-up, a scan without building any mapping."""
    for key, value in raw:
        if key == name:
            return value.decode("latin-1")
    return None


__all__ = ["first_value", "first_values"]

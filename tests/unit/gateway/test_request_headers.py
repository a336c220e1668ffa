"""The request steps' header dict answers every look-up as Starlette's ``Headers.get``."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from enclave.common import timeouts, wire
from enclave.gateway.api import steps
from enclave.gateway.request_headers import first_value, first_values

_NAMES = st.sampled_from(
    [wire.H_AUTHORIZATION, wire.H_AUTH_TYPE, wire.H_REALM, "content-length", "x-a", "x-b"]
)
_VALUES = st.binary(max_size=12).filter(lambda value: b"\r" not in value and b"\n" not in value)


@settings(max_examples=300)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=10))
def test_first_occurrence_wins_as_in_starlettes_headers(pairs: list[tuple[str, bytes]]) -> None:
    raw = [(name.encode(), value) for name, value in pairs]
    starlette = Headers(raw=raw)
    mine = first_values(raw)
    for name in [*{name for name, _ in pairs}, "absent"]:
        assert mine.get(name) == starlette.get(name)
    assert len(mine) == len({name for name, _ in pairs})


def test_values_are_decoded_as_latin1() -> None:
    raw = [(b"x-a", "caf\N{LATIN SMALL LETTER E WITH ACUTE}".encode("latin-1"))]
    assert first_values(raw) == {"x-a": Headers(raw=raw)["x-a"]}


def test_the_names_the_request_steps_look_up_are_lowercase() -> None:
    # The dict holds the server's lowercased names: a mixed-case look-up would never match.
    for name in (
        wire.H_AUTHORIZATION,
        wire.H_AUTH_TYPE,
        wire.H_REALM,
        wire.H_INSTANCE_ID,
        wire.H_GLOBAL_USER_ID,
        steps._MODEL_TIMEOUT,
    ):
        assert name == name.lower()
    assert timeouts.HEADER.lower() == steps._MODEL_TIMEOUT


@settings(max_examples=300)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=10), _NAMES)
def test_first_value_is_headers_get(pairs: list[tuple[str, bytes]], name: str) -> None:
    raw = [(key.encode(), value) for key, value in pairs]
    assert first_value(raw, name.encode()) == Headers(raw=raw).get(name)

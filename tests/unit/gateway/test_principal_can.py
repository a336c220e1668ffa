"""``Principal.can``: any of the asked scopes granted (no scope asked: none granted)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from enclave.gateway.auth.verify import Principal

_SCOPES = st.sampled_from(["complete_code", "code_suggestions", "duo_chat", "explain_code", ""])


@given(st.frozensets(_SCOPES), st.lists(_SCOPES, max_size=4))
def test_any_asked_scope_granted(granted: frozenset[str], asked: list[str]) -> None:
    principal = Principal("iss", "sub", "inst", "self-managed", granted, 0.0, {})
    assert principal.can(*asked) is any(scope in granted for scope in asked)

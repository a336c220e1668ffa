"""The OpenAI API's view of the headers: claims stand in for GitLab's headers, parsed once."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from starlette.datastructures import Headers

from enclave.common import wire
from enclave.gateway.api.openai import common
from enclave.gateway.auth import jws


def _segment(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def _token(sub: str) -> str:
    claims = {"gitlab_realm": "self-managed", "gitlab_instance_id": "inst-1", "sub": sub}
    return f"{_segment({'alg': 'RS256', 'typ': 'JWT'})}.{_segment(claims)}.c2ln"


def _headers(token: str, **extra: str) -> Headers:
    return Headers({"Authorization": f"Bearer {token}", **extra})


@pytest.fixture()
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens parse_token is asked to parse."""
    seen: list[str] = []

    def counting(token: str) -> jws.ParsedToken:
        seen.append(token)
        return jws.parse_token(token)

    monkeypatch.setattr(common, "parse_token", counting)
    monkeypatch.setattr(common, "_stand_ins", {})
    return seen


def test_absent_headers_come_from_the_claims_and_sent_ones_stay(parses: list[str]) -> None:
    token = _token("user-1")
    view = common._auth_view(_headers(token).raw)
    assert view[wire.H_REALM] == "self-managed"
    assert view[wire.H_INSTANCE_ID] == "inst-1"
    assert view[wire.H_GLOBAL_USER_ID] == "user-1"
    assert view[wire.H_AUTH_TYPE] == wire.AUTH_TYPE_OIDC
    sent = common._auth_view(_headers(token, **{"X-Gitlab-Realm": "saas"}).raw)
    assert sent[wire.H_REALM] == "saas"  # the authenticator then refuses the mismatch


def test_a_token_is_parsed_once_for_all_its_requests(parses: list[str]) -> None:
    token = _token("user-2")
    views = [common._auth_view(_headers(token).raw) for _ in range(3)]
    assert views[0] == views[1] == views[2]
    assert parses == [token]


def test_unparseable_tokens_get_no_stand_ins_and_are_not_kept(parses: list[str]) -> None:
    view = common._auth_view(_headers("not-a-token").raw)
    assert wire.H_REALM not in view
    assert common._stand_ins == {}


def test_the_stand_ins_stay_bounded(parses: list[str]) -> None:
    for number in range(common._STAND_INS_MAX + 5):
        common._auth_view(_headers(_token(f"user-{number}")).raw)
    assert 0 < len(common._stand_ins) <= common._STAND_INS_MAX


def test_the_view_is_the_headers_items_lowercased_last_value_winning() -> None:
    """Read from the raw pairs as it was from ``Headers.items()``: a repeated name keeps its
    last value, values decode as latin-1."""
    raw = [
        (b"authorization", b"Bearer not-a-token"),
        (b"x-gitlab-realm", b"first"),
        (b"x-gitlab-realm", b"last"),
        (b"x-a", "caf\N{LATIN SMALL LETTER E WITH ACUTE}".encode("latin-1")),
    ]
    expected = {name.lower(): value for name, value in Headers(raw=raw).items()}
    expected[wire.H_AUTH_TYPE] = wire.AUTH_TYPE_OIDC
    assert common._auth_view(raw) == expected

"""Revocations travel with the routes: revoked PATs and blocked users lose their tokens.

The fake instance (a real aiohttp server) serves the routes document with a ``revoked`` part;
the gateway refuses the OpenAI-API tokens and direct-access user tokens it covers within one
refresh interval, and fails closed (503) once it can no longer know.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai_harness import REFRESH_S, STALE_S, USER_ID, OpenAIFactory, OpenAIHarness, make_openai

from enclave.gateway.routes_table import (
    MAX_REVOKED,
    Revocations,
    RoutesError,
    parse_revocations,
)

__all__ = ["make_openai"]  # fixture

pytestmark = pytest.mark.anyio


def revoke(
    oai: OpenAIHarness, pats: list[Any] | None = None, users: list[str] | None = None
) -> None:
    oai.issuer.routes["revoked"] = {"personal_access_tokens": pats or [], "users": users or []}


async def next_refresh(oai: OpenAIHarness) -> None:
    """Let one refresh interval pass; the gateway then re-reads the routes."""
    oai.clock.advance(REFRESH_S)
    assert await oai.table.refresh(), oai.table.last_error


async def test_revoked_pat_refuses_its_openai_token_within_one_refresh(
    make_openai: OpenAIFactory,
) -> None:
    oai = await make_openai()
    mine, other = oai.token(enclave_pat_id=7), oai.token(enclave_pat_id=8)
    assert (await oai.client.get("/v1/models", headers=oai.auth(mine))).status_code == 200
    assert (await oai.chat()).status_code == 200

    revoke(oai, pats=[7])
    await next_refresh(oai)
    response = await oai.client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers=oai.auth(mine),
    )
    assert response.status_code == 401
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("token_revoked", "invalid_request_error")
    assert "personal access token" in error["message"] and "revoked" in error["message"]
    models = await oai.client.get("/v1/models", headers=oai.auth(mine))
    assert models.status_code == 401
    # Another PAT's token is untouched.
    assert (await oai.client.get("/v1/models", headers=oai.auth(other))).status_code == 200
    assert len(oai.model.requests) == 1  # only the call before the revocation


async def test_blocked_user_loses_openai_and_direct_access_tokens(
    make_openai: OpenAIFactory,
) -> None:
    oai = await make_openai()
    user_token = await oai.h.user_token(USER_ID)
    other_user = await oai.h.user_token("someone-else")
    headers = oai.h.user_headers(user_token, USER_ID)
    assert (await oai.h.complete(oai.h.user_body(), headers=headers)).status_code == 200

    revoke(oai, users=[USER_ID])
    await next_refresh(oai)
    response = await oai.chat()
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_revoked"
    assert "blocked" in response.json()["error"]["message"]
    # GitLab dialect on GitLab's endpoints.
    refused = await oai.h.complete(oai.h.user_body(), headers=headers)
    assert refused.status_code == 401
    assert set(refused.json()) == {"error"} and "blocked" in refused.json()["error"]
    assert (
        await oai.h.complete(
            oai.h.user_body(), headers=oai.h.user_headers(other_user, "someone-else")
        )
    ).is_success
    # Unblocked: the instance stops listing the user, the tokens work again.
    revoke(oai)
    await next_refresh(oai)
    assert (await oai.chat()).status_code == 200


async def test_instance_tokens_are_not_subject_to_user_revocations(
    make_openai: OpenAIFactory,
) -> None:
    oai = await make_openai()
    revoke(oai, pats=[1], users=["user-1"])
    await next_refresh(oai)
    # The instance's own per-request tokens: it checks the PAT itself on every request.
    assert (await oai.h.complete()).status_code == 200


async def test_unknown_revocation_state_fails_closed(make_openai: OpenAIFactory) -> None:
    oai = await make_openai()
    token = await oai.h.user_token(USER_ID)
    await oai.issuer.stop()  # the instance goes away
    oai.clock.advance(REFRESH_S + STALE_S)
    assert not await oai.table.refresh()
    response = await oai.chat()
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "routes_unavailable"
    assert "cannot check whether this token was revoked" in error["message"]
    direct = await oai.h.complete(headers=oai.h.user_headers(token, USER_ID))
    assert direct.status_code == 503
    assert "cannot check whether this token was revoked" in direct.json()["error"]
    assert oai.model.requests == []


async def test_user_tokens_wait_for_the_first_load(make_openai: OpenAIFactory) -> None:
    oai = await make_openai(load=False)
    oai.issuer.routes_status = 500
    token = await oai.h.user_token(USER_ID)
    assert not await oai.table.refresh()
    response = await oai.h.complete(headers=oai.h.user_headers(token, USER_ID))
    assert response.status_code == 503
    assert "has not loaded the AI feature routes" in response.json()["error"]


def test_revocation_lists_are_bounded_and_checked() -> None:
    assert parse_revocations({"routes": []}) == Revocations()  # an older instance
    parsed = parse_revocations({"revoked": {"personal_access_tokens": [3, "4"], "users": ["u"]}})
    assert parsed == Revocations(frozenset({"3", "4"}), frozenset({"u"}))
    too_many = list(range(MAX_REVOKED + 1))
    with pytest.raises(RoutesError, match=f"more than {MAX_REVOKED}"):
        parse_revocations({"revoked": {"personal_access_tokens": too_many}})
    for bad in ({"users": "u"}, {"users": [{"id": 1}]}, {"users": [True]}, []):
        with pytest.raises(RoutesError):
            parse_revocations({"revoked": bad})


async def test_an_oversized_revocation_list_keeps_the_last_good_state(
    make_openai: OpenAIFactory,
) -> None:
    oai = await make_openai()
    revoke(oai, pats=[7])
    await next_refresh(oai)
    oai.issuer.routes["revoked"] = {"personal_access_tokens": list(range(MAX_REVOKED + 1))}
    oai.clock.advance(REFRESH_S)
    assert not await oai.table.refresh()
    assert "more than" in (oai.table.last_error or "")
    assert oai.table.revocations.pat_ids == frozenset({"7"})


async def test_revoked_editor_key_is_refused_within_one_refresh(
    make_openai: OpenAIFactory,
) -> None:
    """A personal editor key (a long-lived token with ``enclave_editor_key_id``) is refused
    once the instance lists its id; other keys keep working."""
    oai = await make_openai()
    mine, other = oai.token(enclave_editor_key_id=3), oai.token(enclave_editor_key_id=4)
    assert (await oai.client.get("/v1/models", headers=oai.auth(mine))).status_code == 200

    oai.issuer.routes["revoked"] = {"editor_keys": [3]}
    await next_refresh(oai)
    response = await oai.client.get("/v1/models", headers=oai.auth(mine))
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "token_revoked"
    assert "editor key has been revoked" in error["message"]
    assert "/-/user_settings/editor_keys" in error["message"]
    assert (await oai.client.get("/v1/models", headers=oai.auth(other))).status_code == 200


async def test_a_personal_access_token_gets_a_hint_to_create_an_editor_key(
    make_openai: OpenAIFactory,
) -> None:
    """Finding 6: a PAT sent as the OpenAI API key says what to use instead, not "malformed"."""
    oai = await make_openai()
    pat = "glpat-" + "a" * 20
    response = await oai.client.get("/v1/models", headers={"Authorization": f"Bearer {pat}"})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert "personal access token" in error["message"]
    assert "editor key" in error["message"] and "/-/user_settings/editor_keys" in error["message"]
    assert "malformed" not in error["message"] and pat not in response.text


def test_editor_key_revocations_parse() -> None:
    assert parse_revocations({"revoked": {"editor_keys": [1, "2"]}}) == Revocations(
        editor_key_ids=frozenset({"1", "2"})
    )
    with pytest.raises(RoutesError, match="editor_keys"):
        parse_revocations({"revoked": {"editor_keys": [{"id": 1}]}})

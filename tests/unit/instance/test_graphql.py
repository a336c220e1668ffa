"""GraphQL at /api/graphql: errors, limits, authentication, availability from the real state,
chat failures reaching aiMessages; and the bounds of the in-memory chat history."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from graphql import get_introspection_query

from enclave.instance.api.graphql_endpoint import NOT_AVAILABLE
from enclave.instance.chat_history import ChatHistory
from enclave.instance.graphql_schema import MAX_DEPTH
from enclave.instance.usage import usage_report
from tests.unit.instance.conftest import (
    EMBEDDED_ENDPOINT,
    FakeGateway,
    LiveInstance,
    write_model_api_key,
)


@pytest.fixture(scope="module")
def instance(instance17: LiveInstance) -> LiveInstance:
    """This module pins GitLab 17's gateway API (chat on /v1/chat/*); GitLab 18's chat is
    tested in test_chat_gitlab18.py."""
    return instance17


PATH = "/api/graphql"
AVAILABILITY = (
    "{ currentUser { duoCodeSuggestionsAvailable duoChatAvailable duoChatAvailableFeatures } "
    'project(fullPath: "g/p") { duoFeaturesEnabled } }'
)
ASK = 'mutation { aiAction(input: {chat: {content: "%s"}}) { requestId errors } }'


def post(instance: LiveInstance, token: str | None, body: Any) -> httpx.Response:
    headers = {"PRIVATE-TOKEN": token} if token else {}
    return httpx.post(instance.url + PATH, json=body, headers=headers, timeout=30)


def query(instance: LiveInstance, token: str, text: str) -> dict[str, Any]:
    response = post(instance, token, {"query": text})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


@pytest.fixture()
def token(instance: LiveInstance) -> str:
    return instance.new_token(("api",))


def test_unknown_field_is_a_graphql_error(instance: LiveInstance, token: str) -> None:
    result = query(instance, token, "{ currentUser { id password } }")
    assert "data" not in result
    [error] = result["errors"]
    assert error["message"].startswith("Cannot query field 'password' on type 'CurrentUser'")
    assert error["locations"] == [{"line": 1, "column": 20}]


def test_syntax_errors_and_missing_queries(instance: LiveInstance, token: str) -> None:
    assert "Syntax Error" in query(instance, token, "{ currentUser { id ")["errors"][0]["message"]
    empty = httpx.post(instance.url + PATH, headers={"PRIVATE-TOKEN": token})
    assert empty.status_code == 400 and '"query"' in empty.json()["message"]
    missing = post(instance, token, {"variables": {}})
    assert missing.status_code == 200
    assert missing.json()["errors"][0]["message"] == "No query string was present"
    bad_vars = post(instance, token, {"query": "{ metadata { version } }", "variables": [1]})
    assert bad_vars.json()["errors"][0]["message"] == "variables must be a JSON object"
    subscription = query(instance, token, "subscription { currentUser { id } }")
    assert subscription["errors"]


def test_too_deep_query_is_refused(instance: LiveInstance, token: str) -> None:
    nested = "name"
    for _ in range(MAX_DEPTH):
        nested = f"ofType {{ {nested} }}"
    deep = f"{{ __schema {{ types {{ fields {{ type {{ {nested} }} }} }} }} }}"
    result = query(instance, token, deep)
    assert "data" not in result
    [error] = result["errors"]
    assert error["message"].startswith("Query has depth of 16, which exceeds max depth of 15")


def test_too_complex_and_too_long_queries_are_refused(instance: LiveInstance, token: str) -> None:
    wide = "{ " + " ".join(f'f{i}: featureFlagEnabled(name: "x")' for i in range(300)) + " }"
    result = query(instance, token, wide)
    assert "exceeds max complexity of 250" in result["errors"][0]["message"]
    long = "{ " + " ".join(f"a{i}: __typename" for i in range(3000)) + " }"
    result = query(instance, token, long)
    assert "tokens" in result["errors"][0]["message"]
    # Fragments are counted where they are spread, so a fragment bomb is refused too.
    bomb = (
        'fragment A on Query { featureFlagEnabled(name: "a") b: featureFlagEnabled(name: "b") '
        'c: featureFlagEnabled(name: "c") } '
        "query { " + " ".join(f"x{i}: metadata {{ version }} ...A" for i in range(100)) + " }"
    )
    assert "exceeds max complexity" in query(instance, token, bomb)["errors"][0]["message"]


def test_the_standard_introspection_query_stays_within_the_limits(
    instance: LiveInstance, token: str
) -> None:
    result = query(instance, token, get_introspection_query())
    assert "errors" not in result
    types = {t["name"] for t in result["data"]["__schema"]["types"]}
    assert {"CurrentUser", "AiActionInput", "AiChatMessage"} <= types


def test_body_size_is_limited(instance: LiveInstance, token: str) -> None:
    huge = {"query": "{ metadata { version } }", "variables": {"x": "a" * (1024 * 1024)}}
    assert post(instance, token, huge).status_code == 413


def test_no_token_or_a_wrong_one_is_401(instance: LiveInstance) -> None:
    assert post(instance, None, {"query": "{ currentUser { id } }"}).status_code == 401
    wrong = post(instance, "glpat-" + "w" * 27, {"query": "{ currentUser { id } }"})
    assert wrong.status_code == 401
    assert wrong.json() == {"message": "401 Unauthorized"}


def test_a_token_without_an_ai_scope_sees_nothing_available(instance: LiveInstance) -> None:
    reader = instance.new_token(("read_user",))
    data = query(instance, reader, AVAILABILITY)["data"]
    assert data["currentUser"] == {
        "duoCodeSuggestionsAvailable": False,
        "duoChatAvailable": False,
        "duoChatAvailableFeatures": [],
    }
    assert data["project"] == {"duoFeaturesEnabled": False}
    refused = query(instance, reader, ASK % "hello")
    assert refused["data"] == {"aiAction": None}
    assert refused["errors"][0]["message"] == NOT_AVAILABLE
    assert refused["errors"][0]["path"] == ["aiAction"]


@pytest.mark.usefixtures("restore_features")
def test_availability_follows_the_feature_settings(instance: LiveInstance, token: str) -> None:
    instance.set_feature("duo_chat", "disabled")
    instance.set_feature("duo_chat_explain_code", "disabled")
    data = query(instance, token, AVAILABILITY)["data"]
    assert data["currentUser"]["duoCodeSuggestionsAvailable"] is True
    assert data["currentUser"]["duoChatAvailable"] is False
    assert "include_file_context" not in data["currentUser"]["duoChatAvailableFeatures"]
    assert "duo_chat_explain_code" not in data["currentUser"]["duoChatAvailableFeatures"]
    assert data["project"] == {"duoFeaturesEnabled": True}
    # Asking anyway: the REST chat's 403, as a GraphQL error.
    refused = query(instance, token, ASK % "hello")
    assert "General chat is disabled on this instance" in refused["errors"][0]["message"]
    assert refused["errors"][0]["extensions"] == {"status": 403}
    instance.set_feature("code_completions", "disabled")
    instance.set_feature("code_generations", "vendored")
    data = query(instance, token, AVAILABILITY)["data"]
    assert data["currentUser"]["duoCodeSuggestionsAvailable"] is False
    assert data["project"] == {"duoFeaturesEnabled": False}


async def chat_answer(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response({"response": "Fine."})


async def gateway_fails(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response({"detail": "boom"}, status=500)


def test_a_failed_answer_reaches_ai_messages_with_its_error_code(
    instance: LiveInstance, token: str, fresh_gateway: FakeGateway
) -> None:
    fresh_gateway.handler = gateway_fails
    asked = query(instance, token, ASK % "/tests def f(): pass")
    request_id = asked["data"]["aiAction"]["requestId"]
    polled = (
        f'{{ aiMessages(requestIds: ["{request_id}"], roles: [ASSISTANT]) '
        "{ nodes { content errors } } }"
    )
    deadline = time.monotonic() + 20
    nodes: list[dict[str, Any]] = []
    while not nodes and time.monotonic() < deadline:
        nodes = query(instance, token, polled)["data"]["aiMessages"]["nodes"]
        time.sleep(0.05)
    [answer] = nodes
    [error] = answer["errors"]
    assert error.endswith("Error code: A9999") and answer["content"] == error
    assert "boom" not in error  # non-admins get the generic model error
    assert fresh_gateway.requests[0].path == "/v1/chat/write_tests"


def test_clear_and_reset_manage_the_conversation_without_a_model(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    token = instance.new_token(("ai_features",))
    listed = "{ aiMessages { nodes { content role } } }"
    reset = query(instance, token, ASK % "/reset")["data"]["aiAction"]
    assert reset["errors"] == [] and reset["requestId"]
    nodes = query(instance, token, listed)["data"]["aiMessages"]["nodes"]
    assert nodes == [{"content": "/reset", "role": "USER"}]
    query(instance, token, ASK % "/clear")
    assert query(instance, token, listed)["data"]["aiMessages"]["nodes"] == []
    assert fresh_gateway.requests == []


def test_messages_are_per_user(instance: LiveInstance, token: str) -> None:
    other = instance.new_token(("api",))
    instance.ctx.chat_history.add(10**9, "r", "user", "not yours")
    mine = query(instance, other, "{ aiMessages { nodes { content } } }")
    assert mine["data"]["aiMessages"]["nodes"] == []


# --- the history's bounds -------------------------------------------------------------------


def test_history_keeps_the_newest_messages_per_user() -> None:
    history = ChatHistory(max_messages=3)
    for i in range(5):
        history.add(1, f"r{i}", "user", f"q{i}")
    assert [m.content for m in history.messages(1)] == ["q2", "q3", "q4"]
    assert history.messages(2) == []
    assert [m.content for m in history.messages(1, request_ids=["r3"])] == ["q3"]
    history.add(1, "r4", "assistant", "a4")
    assert [m.content for m in history.messages(1, roles=["assistant"])] == ["a4"]


def test_history_is_bounded_in_size_age_and_users() -> None:
    now = [0.0]
    history = ChatHistory(max_chars=10, max_age_s=60, max_users=2, clock=lambda: now[0])
    history.add(1, "a", "user", "12345")
    history.add(1, "b", "user", "123456")
    assert [m.request_id for m in history.messages(1)] == ["b"]  # 11 characters > 10
    now[0] = 61.0
    assert history.messages(1) == []  # too old
    history.add(1, "c", "user", "x")
    history.add(2, "d", "user", "x")
    history.add(3, "e", "user", "x")
    assert history.messages(1) == []  # least recently active user dropped
    assert [m.request_id for m in history.messages(3)] == ["e"]


def test_ai_action_counts_against_the_rest_chats_limit(
    live_instance_factory: Callable[..., LiveInstance], fresh_gateway: FakeGateway, tmp_path: Path
) -> None:
    """One chat limit per user, whichever API asks: aiAction goes through prepare_chat."""
    fresh_gateway.handler = chat_answer
    data_dir = tmp_path / "limited"
    write_model_api_key(data_dir)
    live = live_instance_factory(
        data_dir,
        gateway_url=fresh_gateway.url,
        embedded_model_endpoint=EMBEDDED_ENDPOINT,
        duo_chat_rate_limit=2,
        ai_gateway_api="gitlab17",
    )
    token = live.new_token(("ai_features",))
    assert query(live, token, ASK % "first")["data"]["aiAction"]["errors"] == []
    rest = httpx.post(
        f"{live.url}/api/v4/chat/completions",
        json={"content": "second"},
        headers={"PRIVATE-TOKEN": token},
        timeout=30,
    )
    assert rest.status_code == 200, rest.text
    refused = query(live, token, ASK % "third")
    assert refused["data"] == {"aiAction": None}
    assert refused["errors"][0]["extensions"] == {"status": 429}
    assert "the limit for Duo Chat is 2 requests" in refused["errors"][0]["message"]


def test_ai_action_usage_is_recorded_when_the_answer_ends(
    instance: LiveInstance, token: str, fresh_gateway: FakeGateway
) -> None:
    """Usage of aiAction: recorded by the background answer (the mutation returns first)."""
    fresh_gateway.handler = gateway_fails
    me = httpx.get(
        instance.url + "/api/v4/user", headers={"PRIVATE-TOKEN": token}, timeout=10
    ).json()
    query(instance, token, ASK % "/tests def g(): pass")
    usage = instance.ctx.usage
    deadline = time.monotonic() + 20
    rows: list[Any] = []
    while not rows and time.monotonic() < deadline:
        usage.flush(instance.ctx.sessions, instance.ctx.user_id_salt)
        with instance.ctx.sessions() as session:
            since = datetime.now(UTC) - timedelta(minutes=5)
            rows = usage_report(session, since=since, group_by=("feature",), user_id=me["id"])
        time.sleep(0.05)
    [row] = rows
    assert (row.feature, row.requests, row.errors) == ("duo_chat_write_tests", 1, 1)

"""An editor session as GitLab's Language Server plays it against the instance, in its order:
token check (a short ``glpat-`` token at ``/api/v4/personal_access_tokens/self``, a token of 42
characters or more at ``/oauth/token/info``), version, GraphQL availability and instance
flags, then a chat through ``aiAction`` with ``aiMessages`` polling. Live instance, fake
gateway (tests/unit/instance/conftest.py)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

import httpx
import pytest
from aiohttp import web
from sqlalchemy import select
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from enclave.common import wire
from enclave.instance.db import PersonalAccessToken, User
from tests.unit.instance.conftest import FakeGateway, LiveInstance


@pytest.fixture(scope="module")
def instance(instance17: LiveInstance) -> LiveInstance:
    """This module pins GitLab 17's gateway API (chat on /v1/chat/*); GitLab 18's chat is
    tested in test_chat_gitlab18.py."""
    return instance17


# The Language Server's own gates (khulnasoft-lsp / gitlab-lsp): a token this long is OAuth,
# and these versions switch on chat, direct connections and chat features.
OAUTH_TOKEN_MIN_LENGTH = 42
VERSION_GATES = ("16.8.0", "17.2.0", "17.6.0")
LSP_INSTANCE_FLAGS = {
    "advanced_context_resolver": True,
    "code_suggestions_context": True,
    "duo_additional_context": True,
    "duo_workflow": False,
    "ai_user_model_switching": False,
    "use_duo_context_exclusion": False,
}

CURRENT_USER = """
query getCurrentUser {
  currentUser { id username name duoCodeSuggestionsAvailable duoChatAvailable
                duoChatAvailableFeatures }
}
"""
# From 17.9 on (the clients coerce "17.9.0-enclave" to 17.9.0).
AVAILABLE_FEATURES = """
query getDuoAvailableFeatures { currentUser { duoChatAvailableFeatures codeSuggestionsContexts } }
"""
FLAG = "query featureFlagsEnabled($name: String!) { featureFlagEnabled(name: $name) }"
METADATA_FLAGS = """
query getFlags($names: [String!]!) {
  metadata { version featureFlags(names: $names) { name enabled } }
}
"""
PROJECT = """
query getProject($projectPath: ID!) { project(fullPath: $projectPath) { id duoFeaturesEnabled } }
"""
CHAT = """
mutation chat($question: String!, $resourceId: AiModelID,
              $currentFileContext: AiCurrentFileInput, $clientSubscriptionId: String,
              $platformOrigin: String!, $additionalContext: [AiAdditionalContextInput!]) {
  aiAction(input: {
    chat: { resourceId: $resourceId, content: $question, currentFile: $currentFileContext,
            additionalContext: $additionalContext }
    clientSubscriptionId: $clientSubscriptionId
    platformOrigin: $platformOrigin
  }) { requestId errors }
}
"""
MESSAGES = """
query getAiMessages($requestIds: [ID!], $roles: [AiMessageRole!]) {
  aiMessages(requestIds: $requestIds, roles: $roles) {
    nodes { requestId role content contentHtml timestamp errors
            extras { sources additionalContext { id category metadata } } }
  }
}
"""


def semver(version: str) -> tuple[int, int, int]:
    core = version.split("-", 1)[0]
    major, minor, patch = (int(part) for part in core.split("."))
    return major, minor, patch


async def explain_answer(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response({"response": "It adds two numbers.", "metadata": {}})


@pytest.fixture()
def chat_gateway(fresh_gateway: FakeGateway) -> FakeGateway:
    fresh_gateway.handler = explain_answer
    return fresh_gateway


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def graphql(
    instance: LiveInstance, token: str, query: str, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = httpx.post(
        f"{instance.url}/api/graphql",
        json={"query": query, "variables": variables or {}},
        headers=bearer(token),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def usage_events(instance: LiveInstance) -> float:
    text = httpx.get(f"{instance.url}/metrics").text
    [value] = re.findall(r"^enclave_instance_usage_events_total (\S+)$", text, re.MULTILINE)
    return float(value)


def poll_answer(instance: LiveInstance, token: str, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        result = graphql(
            instance, token, MESSAGES, {"requestIds": [request_id], "roles": ["ASSISTANT"]}
        )
        nodes = result["data"]["aiMessages"]["nodes"]
        if nodes:
            [node] = nodes
            return dict(node)
        time.sleep(0.05)
    raise AssertionError("no answer within 20 s")


def test_an_editor_session_as_the_language_server_plays_it(
    instance: LiveInstance, chat_gateway: FakeGateway
) -> None:
    url = instance.url
    admin = {"PRIVATE-TOKEN": instance.admin_token}
    user = httpx.post(
        f"{url}/api/v4/users",
        json={"username": "editor", "email": "editor@example.com", "name": "Ed Itor"},
        headers=admin,
    ).json()
    created = httpx.post(
        f"{url}/api/v4/users/{user['id']}/personal_access_tokens",
        json={"name": "vscode", "scopes": ["api"]},
        headers=admin,
    ).json()
    token = created["token"]

    # 1. Token check, PAT branch: GitLab's format, short enough not to be taken for OAuth.
    assert token.startswith("glpat-") and len(token) < OAUTH_TOKEN_MIN_LENGTH
    me = httpx.get(f"{url}/api/v4/personal_access_tokens/self", headers=bearer(token))
    assert me.status_code == 200, me.text
    assert me.json()["active"] is True and "api" in me.json()["scopes"]

    # 1'. Token check, OAuth branch: the same token answers Doorkeeper's introspection.
    info = httpx.get(f"{url}/oauth/token/info", headers=bearer(token))
    assert info.status_code == 200, info.text
    body = info.json()
    assert body["resource_owner_id"] == user["id"]
    assert "api" in body["scope"]
    # PATs expire by default (pat_max_lifetime_days): seconds left, as Doorkeeper says it.
    assert 0 < body["expires_in"] <= 366 * 86400
    assert body["application"] == {"uid": None}
    assert isinstance(body["created_at"], int)

    # 2. Version: semver past every gate the clients apply; Enclave's version as revision.
    version = httpx.get(f"{url}/api/v4/version", headers=bearer(token)).json()
    assert version["version"] == wire.INSTANCE_VERSION
    assert all(semver(version["version"]) >= semver(gate) for gate in VERSION_GATES)
    assert version["revision"].startswith("enclave-")
    metadata = httpx.get(f"{url}/api/v4/metadata", headers=bearer(token)).json()
    assert metadata["version"] == version["version"] and metadata["enterprise"] is True
    assert metadata["kas"]["enabled"] is False

    # 3. GraphQL: who am I, what may I use, which instance flags are on.
    current = graphql(instance, token, CURRENT_USER)["data"]["currentUser"]
    assert current["id"] == f"gid://gitlab/User/{user['id']}"
    assert current["username"] == "editor" and current["name"] == "Ed Itor"
    assert current["duoCodeSuggestionsAvailable"] is True
    assert current["duoChatAvailable"] is True
    assert "duo_chat_explain_code" in current["duoChatAvailableFeatures"]
    assert "include_file_context" in current["duoChatAvailableFeatures"]
    features = graphql(instance, token, AVAILABLE_FEATURES)["data"]["currentUser"]
    assert features["codeSuggestionsContexts"] == ["open_tabs", "imports"]
    assert features["duoChatAvailableFeatures"] == current["duoChatAvailableFeatures"]
    for name, enabled in LSP_INSTANCE_FLAGS.items():
        answer = graphql(instance, token, FLAG, {"name": name})
        assert answer == {"data": {"featureFlagEnabled": enabled}}, name
    flags = graphql(instance, token, METADATA_FLAGS, {"names": list(LSP_INSTANCE_FLAGS)})
    assert flags["data"]["metadata"]["featureFlags"] == [
        {"name": name, "enabled": enabled} for name, enabled in LSP_INSTANCE_FLAGS.items()
    ]
    project = graphql(instance, token, PROJECT, {"projectPath": "group/app"})
    assert project["data"]["project"]["duoFeaturesEnabled"] is True

    # 4. Chat: /explain on the selection, with a snippet as additional context.
    asked = graphql(
        instance,
        token,
        CHAT,
        {
            "question": "/explain",
            "platformOrigin": "vs_code_extension",
            "clientSubscriptionId": "sub-1",
            "currentFileContext": {
                "fileName": "calc.py",
                "selectedText": "def add(a, b):\n    return a + b",
            },
            "additionalContext": [
                {"category": "SNIPPET", "id": "helpers", "content": "TAX = 0.2", "metadata": {}}
            ],
        },
    )
    assert "errors" not in asked, asked
    payload = asked["data"]["aiAction"]
    assert payload["errors"] == [] and payload["requestId"]
    answer = poll_answer(instance, token, payload["requestId"])
    assert answer["role"] == "ASSISTANT" and answer["content"] == "It adds two numbers."
    assert answer["errors"] == [] and answer["requestId"] == payload["requestId"]
    assert answer["timestamp"].endswith("Z")
    # The same path as the REST chat: the slash command's feature, its prompt, the context.
    [sent] = chat_gateway.requests
    assert sent.path == "/v1/chat/explain_code"
    text = sent.body["prompt_components"][0]["payload"]["content"][0]["content"]
    assert "<current_file name='calc.py'>" in text and "def add(a, b)" in text
    assert "<snippet name='helpers'>\nTAX = 0.2" in text
    assert text.endswith("Explain this code:")
    # The question is in the conversation too, under the same request id.
    everything = graphql(instance, token, MESSAGES, {"requestIds": [payload["requestId"]]})
    question, _ = nodes = everything["data"]["aiMessages"]["nodes"]
    assert [n["role"] for n in nodes] == ["USER", "ASSISTANT"]
    assert question["content"] == "/explain"
    assert question["extras"]["additionalContext"] == [
        {"id": "helpers", "category": "SNIPPET", "metadata": {}}
    ]

    # 5. Usage ping: accepted and counted, nothing kept.
    before = usage_events(instance)
    tracked = httpx.post(
        f"{url}/api/v4/usage_data/track_event",
        json={"event": "code_suggestion_shown_in_ide", "additional_properties": {"lang": "py"}},
        headers=bearer(token),
    )
    assert tracked.status_code == 200 and tracked.json() == {}
    assert usage_events(instance) == before + 1


def test_a_long_token_made_before_passes_the_oauth_check(instance: LiveInstance) -> None:
    """A 51-character ``enclpat-`` token (issued before) is OAuth to the clients: it must
    answer ``/oauth/token/info`` until it expires or is revoked."""
    token = instance.new_token(("api",), username="legacy-editor")
    legacy = "enclpat-" + "Q" * 43
    with instance.ctx.sessions() as session, session.begin():
        user = session.scalar(select(User).where(User.username == "legacy-editor"))
        assert user is not None
        record = session.scalar(
            select(PersonalAccessToken).where(
                PersonalAccessToken.token_digest == hashlib.sha256(token.encode()).hexdigest()
            )
        )
        assert record is not None
        record.token_digest = hashlib.sha256(legacy.encode()).hexdigest()
    assert len(legacy) >= OAUTH_TOKEN_MIN_LENGTH
    info = httpx.get(f"{instance.url}/oauth/token/info", headers=bearer(legacy))
    assert info.status_code == 200, info.text
    assert info.json()["scope"] == ["api"] and info.json()["resource_owner_id"] == user.id
    with instance.ctx.sessions() as session, session.begin():
        record = session.scalar(
            select(PersonalAccessToken).where(
                PersonalAccessToken.token_digest == hashlib.sha256(legacy.encode()).hexdigest()
            )
        )
        assert record is not None
        record.revoked = True
    refused = httpx.get(f"{instance.url}/oauth/token/info", headers=bearer(legacy))
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_token"
    assert refused.headers["WWW-Authenticate"].startswith('Bearer realm="Doorkeeper"')
    assert legacy not in refused.text


def test_token_info_states_the_expiry(instance: LiveInstance) -> None:
    from datetime import timedelta

    from enclave.instance.db import utcnow

    token = instance.new_token(("ai_features",), expires_at=utcnow() + timedelta(days=2))
    body = httpx.get(f"{instance.url}/oauth/token/info", headers=bearer(token)).json()
    assert body["scope"] == ["ai_features"]
    assert 2 * 86400 - 60 < body["expires_in"] <= 2 * 86400
    assert body["expires_in_seconds"] == body["expires_in"]


@pytest.mark.parametrize("path", ["/oauth/token/info", "/api/v4/version", "/api/v4/metadata"])
def test_no_or_wrong_token_is_401(instance: LiveInstance, path: str) -> None:
    assert httpx.get(instance.url + path).status_code == 401
    wrong = httpx.get(instance.url + path, headers=bearer("glpat-" + "x" * 27))
    assert wrong.status_code == 401


def test_track_event_needs_an_event_name(instance: LiveInstance) -> None:
    token = instance.new_token(("ai_features",))
    response = httpx.post(
        f"{instance.url}/api/v4/usage_data/track_event", json={}, headers=bearer(token)
    )
    assert response.status_code == 400 and "event is missing" in response.json()["message"]
    batch = httpx.post(
        f"{instance.url}/api/v4/usage_data/track_events",
        json={"events": [{"event": "a"}, {"event": "b"}]},
        headers=bearer(token),
    )
    assert batch.status_code == 200


# --- streamed answers over ActionCable (/-/cable) --------------------------------------------

SUBSCRIPTION = """
subscription aiCompletionResponse($userId: UserID, $clientSubscriptionId: String,
                                  $aiAction: AiAction, $htmlResponse: Boolean = true) {
  aiCompletionResponse(userId: $userId, aiAction: $aiAction,
                       clientSubscriptionId: $clientSubscriptionId) {
    id requestId content contentHtml @include(if: $htmlResponse) errors role timestamp
    type chunkId extras { sources additionalContext { id category metadata } }
  }
}
"""


async def stream_answer(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    body = await request.json()
    if not body.get("stream"):
        return web.json_response({"response": "It adds two numbers."})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    for piece in (b"It adds ", b"two numbers."):
        await response.write(piece)
    await response.write_eof()
    return response


def cable_identifier(user_gid: str, subscription_id: str) -> str:
    return json.dumps(
        {
            "channel": "GraphqlChannel",
            "query": SUBSCRIPTION,
            # JSON-encoded, as GitLab's AiCompletionResponseChannel sends them.
            "variables": json.dumps(
                {
                    "htmlResponse": False,
                    "userId": user_gid,
                    "aiAction": "CHAT",
                    "clientSubscriptionId": subscription_id,
                }
            ),
            "operationName": "aiCompletionResponse",
        }
    )


def cable_frames(ws: Any, count: int) -> list[dict[str, Any]]:
    """The next ``count`` frames that are not pings."""
    frames: list[dict[str, Any]] = []
    while len(frames) < count:
        frame = json.loads(ws.recv(timeout=20))
        if frame.get("type") != "ping":
            frames.append(frame)
    return frames


def test_chat_answers_stream_over_actioncable(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    fresh_gateway.handler = stream_answer
    token = instance.new_token(("api",), username="cable-editor")
    # The client builds the user's global id from GET /api/v4/user.
    user_id = httpx.get(f"{instance.url}/api/v4/user", headers=bearer(token)).json()["id"]
    me = f"gid://gitlab/User/{user_id}"
    cable_url = instance.url.replace("http://", "ws://") + "/-/cable"
    with connect(
        cable_url,
        subprotocols=[Subprotocol("actioncable-v1-json")],
        additional_headers=bearer(token),
    ) as ws:
        assert ws.subprotocol == "actioncable-v1-json"
        assert cable_frames(ws, 1) == [{"type": "welcome"}]
        identifier = cable_identifier(me, "sub-42")
        ws.send(json.dumps({"command": "subscribe", "identifier": identifier}))
        assert cable_frames(ws, 1) == [{"identifier": identifier, "type": "confirm_subscription"}]
        # Someone else's answers are not to be had.
        other = cable_identifier("gid://gitlab/User/999999", "sub-42")
        ws.send(json.dumps({"command": "subscribe", "identifier": other}))
        assert cable_frames(ws, 1) == [{"identifier": other, "type": "reject_subscription"}]

        asked = graphql(
            instance,
            token,
            CHAT,
            {
                "question": "/refactor x=1",
                "platformOrigin": "vs_code_extension",
                "clientSubscriptionId": "sub-42",
            },
        )
        request_id = asked["data"]["aiAction"]["requestId"]
        messages = []
        while not messages or messages[-1]["chunkId"] is not None:
            [frame] = cable_frames(ws, 1)
            assert frame["identifier"] == identifier and frame["message"]["more"] is True
            messages.append(frame["message"]["result"]["data"]["aiCompletionResponse"])
        *chunks, final = messages
        assert [c["chunkId"] for c in chunks] == list(range(1, len(chunks) + 1))
        assert "".join(c["content"] for c in chunks) == "It adds two numbers."
        assert final["content"] == "It adds two numbers." and final["errors"] == []
        assert final["requestId"] == request_id and final["role"] == "ASSISTANT"
        assert "contentHtml" not in final  # htmlResponse: false
        assert fresh_gateway.requests[0].path == "/v1/chat/refactor_code"
        assert fresh_gateway.requests[0].body["stream"] is True
        ws.send(json.dumps({"command": "unsubscribe", "identifier": identifier}))
    # The answer is kept for polling as well.
    assert poll_answer(instance, token, request_id)["content"] == "It adds two numbers."
    # Unsubscribed and gone: nothing is left listening for this user.
    deadline = time.monotonic() + 5
    while instance.ctx.chat_events.listening(user_id, "sub-42"):
        assert time.monotonic() < deadline, "the subscription outlived the connection"
        time.sleep(0.02)


@pytest.mark.parametrize("scopes", [None, ("read_user",)])
def test_the_cable_needs_a_token_that_may_use_ai(
    instance: LiveInstance, scopes: tuple[str, ...] | None
) -> None:
    headers = bearer(instance.new_token(scopes)) if scopes else {}
    cable_url = instance.url.replace("http://", "ws://") + "/-/cable"
    with pytest.raises(InvalidStatus) as refused:
        connect(cable_url, additional_headers=headers).close()
    assert refused.value.response.status_code == 403

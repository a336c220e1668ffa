"""A whole editor session, played in the order GitLab's Language Server plays it, on the real
stack (instance → gateway → embedded llama.cpp with the tiny model).

Every request is shaped as the Language Server's public source sends it (the copy on GitHub,
``khulnasoft/khulnasoft-lsp``; GitLab's ``gitlab-lsp`` is the same code):

1. ``KhulnaSoftAPI.configureApi`` → ``checkToken``: a token shorter than 42 characters is a
   PAT, checked at ``GET /api/v4/personal_access_tokens/self`` (``active`` and ``api`` in
   ``scopes``); then ``GET /api/v4/version`` (semver, compared with ``semver.compare`` against
   each feature's ``supportedSinceInstanceVersion``: 16.8.0 chat, 17.2.0 direct access, 17.6.0
   chat features). Every request carries ``Authorization: Bearer``, ``User-Agent:
   gitlab-language-server:<version> (<client>:<version>)`` and
   ``X-Gitlab-Language-Server-Version`` (``#getDefaultHeaders``).
2. GraphQL at ``/api/graphql``, the documents as sent: ``getUser`` (user_service.ts),
   ``suggestionsAvailable`` (code_suggestions_duo_license_check.ts, duo_chat_license_check.ts),
   ``getDuoChatAvailableFeatures`` (duo_feature_access_service.ts), ``featureFlagsEnabled`` for
   each ``InstanceFeatureFlags`` (feature_flags.ts) and ``GetProject``
   (workspace_project_access_cache.ts).
3. A completion through the instance: ``DefaultSuggestionClient`` → ``createV2Request``
   (``prompt_version: 1``, ``project_path``, ``project_id: -1``, ``current_file``,
   ``choices_count``, ``intent``, ``context`` items with ``resolution_strategy``). The
   ``DirectConnectionClient`` comes first in the pipeline, but without connection details it
   only starts fetching them and lets the instance answer.
4. A streamed generation: ``StreamingHandler`` (``intent: generation``, ``stream: true``,
   ``generation_type``, ``user_instruction``, header ``X-Supports-Sse-Streaming: true``; without
   ``X-Streaming-Format: sse`` in the answer the body is raw text, appended chunk by chunk).
5. The direct connection: ``POST /api/v4/code_suggestions/direct_access`` → ``{base_url, token,
   expires_at, headers, model_details}``, then ``POST {base_url}/v2/completions`` with those
   headers, ``Authorization: Bearer <token>``, ``X-Gitlab-Authentication-Type: oidc``, the
   Language Server's headers and the ``createV2Request`` body with ``model_details`` spread into
   it.
6. Chat (webview_duo_chat_v2's ``processNewUserRecord``): subscribe to
   ``aiCompletionResponse`` over ActionCable (``/-/cable``, ``GraphqlChannel`` with
   JSON-encoded variables, ``Origin`` header), then the ``aiAction`` mutation of 17.5 and
   later, chunks (``chunkId``) and the full message over the socket; the older webview (and the
   fallback) polls ``getAiMessages`` for the USER and the ASSISTANT record.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

LS_VERSION = "7.20.0"
LS_HEADERS = {
    "User-Agent": f"gitlab-language-server:{LS_VERSION} (vs-code-gitlab-workflow:5.30.0)",
    "X-Gitlab-Language-Server-Version": LS_VERSION,
}
OAUTH_TOKEN_MIN_LENGTH = 42  # KhulnaSoftAPI.#looksLikePatToken
VERSION_GATES = ("16.8.0", "17.2.0", "17.3.0", "17.5.0", "17.6.0")
INSTANCE_FLAGS = ("advanced_context_resolver", "code_suggestions_context", "duo_additional_context")
TIMEOUT_S = 60

GET_USER = """
    query getUser {
      currentUser {
        id
        username
        name
      }
    }
"""
SUGGESTIONS_AVAILABLE = """
    query suggestionsAvailable {
      currentUser {
        duoCodeSuggestionsAvailable
      }
    }
"""
CHAT_AVAILABLE = """
    query suggestionsAvailable {
      currentUser {
        duoChatAvailable
      }
    }
"""
CHAT_FEATURES = """
          query getDuoChatAvailableFeatures {
            currentUser {
              duoChatAvailableFeatures
            }
          }
"""
FLAG = """
  query featureFlagsEnabled($name: String!) {
    featureFlagEnabled(name: $name)
  }
"""
PROJECT = """
  query GetProject($projectPath: ID!) {
    project(fullPath: $projectPath) {
      duoFeaturesEnabled
    }
  }
"""
CHAT_17_5 = """
    mutation chat(
      $question: String!
      $resourceId: AiModelID
      $currentFileContext: AiCurrentFileInput
      $clientSubscriptionId: String
      $platformOrigin: String!
      $additionalContext: [AiAdditionalContextInput!]
    ) {
      aiAction(
        input: {
          chat: {
            resourceId: $resourceId
            content: $question
            currentFile: $currentFileContext
            additionalContext: $additionalContext
          }
          clientSubscriptionId: $clientSubscriptionId
          platformOrigin: $platformOrigin
        }
      ) {
        requestId
        errors
      }
    }
"""
MESSAGES_17_5 = """
  query getAiMessages($requestIds: [ID!], $roles: [AiMessageRole!]) {
    aiMessages(requestIds: $requestIds, roles: $roles) {
      nodes {
        requestId
        role
        content
        contentHtml
        timestamp
        errors
        extras {
          sources
          additionalContext {
            id
            category
            metadata
          }
        }
      }
    }
  }
"""
SUBSCRIPTION_WITH_CONTEXT = """
  subscription aiCompletionResponse(
    $userId: UserID
    $clientSubscriptionId: String
    $aiAction: AiAction
    $htmlResponse: Boolean = true
  ) {
    aiCompletionResponse(
      userId: $userId
      aiAction: $aiAction
      clientSubscriptionId: $clientSubscriptionId
    ) {
      id
      requestId
      content
      contentHtml @include(if: $htmlResponse)
      errors
      role
      timestamp
      type
      chunkId
      extras {
        sources
        additionalContext {
          id
          category
          metadata
        }
      }
    }
  }
"""


def semver(version: str) -> tuple[int, int, int, int]:
    """``semver.compare``'s order for the versions here: a pre-release sorts before its
    release."""
    core, _, pre = version.partition("-")
    major, minor, patch = (int(part) for part in core.split("."))
    return major, minor, patch, 0 if pre else 1


class LanguageServer:
    """The Language Server's HTTP side: its default headers on every request."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.token = token

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **LS_HEADERS, **extra}

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.base_url}{path}", headers=self.headers(), timeout=TIMEOUT_S)

    def post(self, path: str, body: Any = None, **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.base_url}{path}",
            content=json.dumps(body),
            headers=self.headers(**{"Content-Type": "application/json", **headers}),
            timeout=TIMEOUT_S,
        )

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        # graphql-request: POST {query, variables} with the client's headers.
        response = self.post("/api/graphql", {"query": query, "variables": variables or {}})
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        assert "errors" not in result, result
        data: dict[str, Any] = result["data"]
        return data


def v2_request(
    intent: str | None, model_details: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """``createV2Request``: the body of every code suggestion the Language Server sends."""
    body: dict[str, Any] = {
        "prompt_version": 1,
        "project_path": "group/app",
        "project_id": -1,
        "current_file": {
            "content_above_cursor": "def add(a, b):\n    ",
            "content_below_cursor": "\n",
            "file_name": "src/calc.py",
        },
        "choices_count": 1,
        **({"intent": intent} if intent else {}),
        # code_suggestions_context and advanced_context_resolver are on: open tabs go along.
        "context": [
            {
                "type": "file",
                "name": "src/tax.py",
                "content": "TAX = 0.2\n",
                "resolution_strategy": "open_tabs",
            }
        ],
        **(model_details or {}),
    }
    body.update(extra)
    return body


@pytest.fixture(scope="module")
def editor_token(stack: Stack) -> tuple[int, str]:
    """A user and an ``api`` personal access token made through the API, as a person would."""
    admin = {"PRIVATE-TOKEN": stack.admin_token}
    user = httpx.post(
        f"{stack.instance_url}/api/v4/users",
        json={"username": "lsp-editor", "email": "lsp-editor@example.com", "name": "L. S. Editor"},
        headers=admin,
        timeout=TIMEOUT_S,
    )
    assert user.status_code == 201, user.text
    user_id: int = user.json()["id"]
    created = httpx.post(
        f"{stack.instance_url}/api/v4/users/{user_id}/personal_access_tokens",
        json={"name": "vscode", "scopes": ["api"]},
        headers=admin,
        timeout=TIMEOUT_S,
    )
    assert created.status_code == 201, created.text
    return user_id, created.json()["token"]


def routed_family(stack: Stack) -> str:
    setting = httpx.get(
        f"{stack.instance_url}/api/v4/admin/ai/feature_settings/code_completions",
        headers={"PRIVATE-TOKEN": stack.admin_token},
        timeout=TIMEOUT_S,
    )
    assert setting.status_code == 200, setting.text
    family: str = setting.json()["self_hosted_model"]["model"]
    return family


def cable_frames(ws: ClientConnection) -> Iterator[dict[str, Any]]:
    """Frames that are not pings, as they come."""
    while True:
        frame = json.loads(ws.recv(timeout=TIMEOUT_S))
        if frame.get("type") != "ping":
            yield frame


def test_an_editor_session_as_the_language_server_plays_it(
    stack: Stack, editor_token: tuple[int, str], expected_answer: str
) -> None:
    user_id, token = editor_token
    ls = LanguageServer(stack.instance_url, token)

    # 1. Token check: short enough to be a PAT, active, with the scope the client demands.
    assert token.startswith("glpat-") and len(token) < OAUTH_TOKEN_MIN_LENGTH
    checked = ls.get("/api/v4/personal_access_tokens/self")
    assert checked.status_code == 200, checked.text
    assert checked.json()["active"] is True and "api" in checked.json()["scopes"]
    version = ls.get("/api/v4/version")
    assert version.status_code == 200, version.text
    instance_version = version.json()["version"]
    assert all(semver(instance_version) >= semver(gate) for gate in VERSION_GATES)

    # 2. GraphQL: the user, what it may use, the instance flags, the workspace's project.
    me = ls.graphql(GET_USER)["currentUser"]
    assert me == {
        "id": f"gid://gitlab/User/{user_id}",
        "username": "lsp-editor",
        "name": "L. S. Editor",
    }
    assert ls.graphql(SUGGESTIONS_AVAILABLE)["currentUser"]["duoCodeSuggestionsAvailable"] is True
    assert ls.graphql(CHAT_AVAILABLE)["currentUser"]["duoChatAvailable"] is True
    features = ls.graphql(CHAT_FEATURES)["currentUser"]["duoChatAvailableFeatures"]
    assert "duo_chat_explain_code" in features
    for name in INSTANCE_FLAGS:
        assert ls.graphql(FLAG, {"name": name}) == {"featureFlagEnabled": True}, name
    assert ls.graphql(PROJECT, {"projectPath": "group/app"})["project"]["duoFeaturesEnabled"]

    # 3. A completion through the instance (the direct connection has no details yet).
    completion = ls.post("/api/v4/code_suggestions/completions", v2_request("completion"))
    assert completion.status_code == 200, completion.text
    choices = completion.json()["choices"]
    assert [c["text"] for c in choices] == [expected_answer]
    assert any(c["text"].strip() for c in choices)  # what the client checks before showing it

    # 4. A streamed generation, appended as the raw text arrives.
    generation = v2_request(
        "generation",
        stream=True,
        generation_type="comment",
        user_instruction="Write a function that adds two numbers",
        current_file={
            "content_above_cursor": "# Write a function that adds two numbers\n",
            "content_below_cursor": "",
            "file_name": "src/calc.py",
        },
    )
    chunks: list[bytes] = []
    with httpx.stream(
        "POST",
        f"{stack.instance_url}/api/v4/code_suggestions/completions",
        content=json.dumps(generation),
        headers=ls.headers(
            **{"Content-Type": "application/json", "X-Supports-Sse-Streaming": "true"}
        ),
        timeout=TIMEOUT_S,
    ) as streamed:
        assert streamed.status_code == 200, streamed.read()
        assert streamed.headers.get("X-Streaming-Format") != "sse"  # raw text, as relayed
        assert "content-length" not in streamed.headers
        chunks = [chunk for chunk in streamed.iter_raw() if chunk]
    assert b"".join(chunks).decode() == expected_answer
    assert len(chunks) > 1  # the model's pieces, one by one

    # 5. The direct connection: details from the instance, then the gateway itself.
    details = ls.post("/api/v4/code_suggestions/direct_access")
    assert details.status_code == 200, details.text
    access = details.json()
    assert access["base_url"] == stack.gateway_url
    assert access["expires_at"] * 1000 > time.time() * 1000 + 40_000  # not "expired" to it
    for header in ("X-Gitlab-Instance-Id", "X-Gitlab-Realm", "X-Gitlab-Global-User-Id"):
        assert access["headers"][header], header
    direct_headers = {
        **access["headers"],
        **LS_HEADERS,
        "Authorization": f"Bearer {access['token']}",
        "X-Gitlab-Authentication-Type": "oidc",
        # The client writes " application/json"; fetch's Headers strip the space.
        "Content-Type": "application/json",
    }
    body = json.dumps(v2_request("completion", access["model_details"]))
    deadline = time.monotonic() + 30
    while True:  # the gateway reads the routes in the background after start-up
        direct = httpx.post(
            f"{access['base_url']}/v2/completions",
            content=body,
            headers=direct_headers,
            timeout=TIMEOUT_S,
        )
        if direct.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert direct.status_code == 200, direct.text
    answered = direct.json()
    assert [c["text"] for c in answered["choices"]] == [expected_answer]
    # The model the administrator routed code completions to (the body named none).
    assert answered["model"]["engine"] == "litellm"
    assert answered["model"]["name"] == routed_family(stack)

    # 6. Chat: subscribe over the cable first, then ask; chunks, the full message, polling.
    record_id = str(uuid.uuid4())  # the chat record's id is the clientSubscriptionId
    identifier = json.dumps(
        {
            "channel": "GraphqlChannel",
            "operationName": "aiCompletionResponse",
            "query": SUBSCRIPTION_WITH_CONTEXT,
            "variables": json.dumps(
                {
                    "htmlResponse": False,
                    "userId": me["id"],
                    "aiAction": "CHAT",
                    "clientSubscriptionId": record_id,
                }
            ),
        }
    )
    cable_url = stack.instance_url.replace("http://", "ws://", 1) + "/-/cable"
    with connect(
        cable_url,
        subprotocols=[Subprotocol("actioncable-v1-json"), Subprotocol("actioncable-unsupported")],
        additional_headers={**ls.headers(), "Origin": stack.instance_url},
    ) as ws:
        frames = cable_frames(ws)
        assert next(frames) == {"type": "welcome"}
        ws.send(json.dumps({"command": "subscribe", "identifier": identifier}))
        assert next(frames) == {"identifier": identifier, "type": "confirm_subscription"}

        asked = ls.graphql(
            CHAT_17_5,
            {
                "question": "/explain",
                "currentFileContext": {
                    "fileName": "src/calc.py",
                    "selectedText": "def add(a, b):\n    return a + b",
                    "contentAboveCursor": "",
                    "contentBelowCursor": "\n",
                },
                "additionalContext": [
                    {
                        "id": "src/tax.py",
                        "category": "FILE",
                        "content": "TAX = 0.2\n",
                        "metadata": {"relativePath": "src/tax.py", "enabled": True},
                    }
                ],
                "clientSubscriptionId": record_id,
                "platformOrigin": "vs_code_extension",
                "resourceId": None,
            },
        )["aiAction"]
        assert asked["errors"] == [] and asked["requestId"]
        messages: list[dict[str, Any]] = []
        while not messages or messages[-1]["chunkId"]:  # AiCompletionResponseChannel.receive
            frame = next(frames)
            assert frame["identifier"] == identifier and frame["message"]["more"] is True
            messages.append(frame["message"]["result"]["data"]["aiCompletionResponse"])
    *pieces, full = messages
    assert len(pieces) > 1  # streamed: the model's pieces, one by one
    assert [p["chunkId"] for p in pieces] == list(range(1, len(pieces) + 1))
    assert "".join(p["content"] for p in pieces) == expected_answer
    assert full["role"] == "ASSISTANT" and full["requestId"] == asked["requestId"]
    assert full["content"] == expected_answer and full["errors"] == []
    assert "contentHtml" not in full  # htmlResponse: false

    # The older webview and the fallback poll each record of the exchange.
    polled = {}
    for role in ("USER", "ASSISTANT"):
        nodes = ls.graphql(MESSAGES_17_5, {"requestIds": [asked["requestId"]], "roles": [role]})
        [polled[role]] = nodes["aiMessages"]["nodes"]
    assert polled["USER"]["content"] == "/explain"
    assert polled["USER"]["extras"]["additionalContext"] == [
        {
            "id": "src/tax.py",
            "category": "FILE",
            "metadata": {"relativePath": "src/tax.py", "enabled": True},
        }
    ]
    assert polled["ASSISTANT"]["content"] == expected_answer
    assert polled["ASSISTANT"]["errors"] == [] and polled["ASSISTANT"]["timestamp"]

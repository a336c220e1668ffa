"""Requests shaped exactly as GitLab's instance sends them succeed against the gateway.

Each file in ``tests/fixtures/gitlab/`` is one request taken from the reference notes on
GitLab's wire format (the ``source`` field says where): path, body and the unit primitives the
token carries. The test sends it with the full set of headers GitLab's instance adds
(``Gitlab::AiGateway.headers``), against the fake model server, and checks the answer's shape.

Two generations: the ``v*`` files are what GitLab 17 (2024) instances send; the ``gl18_*``
files (``"generation": "gitlab18"``) what GitLab 18 (2026) instances send, with their own
headers (``X-Gitlab-Version: 18.x``) and the 2026 answer shapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from gateway_fakes import MODEL_API_KEY, Harness

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).parents[2] / "fixtures" / "gitlab"
FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))

# What GitLab's instance sends besides the auth headers (gitlab-instance.md §3.3).
GITLAB_HEADERS = {
    "X-Gitlab-Host-Name": "gitlab.example.com",
    "X-Gitlab-Version": "17.9.0-ee",
    "X-Request-ID": "01JFAKEREQUESTID0000000000",
    "X-Gitlab-Rails-Send-Start": "1732571000.123",
    "X-Gitlab-Duo-Seat-Count": "25",
    "X-Gitlab-Feature-Enabled-By-Namespace-Ids": "",
    "X-Gitlab-Feature-Enablement-Type": "duo_enterprise",
    "X-Gitlab-Enabled-Feature-Flags": "",
    "X-Gitlab-Enabled-Instance-Verbose-Ai-Logs": "false",
    "X-Gitlab-Is-Team-Member": "false",
    "X-Gitlab-Client-Type": "vscode",
    "X-Gitlab-Client-Version": "5.20.0",
    "X-Gitlab-Client-Name": "gitlab-vscode-extension",
    "X-Gitlab-Interface": "vscode",
    "X-Gitlab-Language-Server-Version": "7.10.0",
    "User-Agent": "GitLab/17.9.0-ee",
    "X-Gitlab-Model-Prompt-Cache-Enabled": "true",
}


def load(path: Path, endpoint: str) -> dict[str, Any]:
    text = path.read_text()
    text = text.replace("${MODEL_ENDPOINT}", endpoint).replace("${MODEL_API_KEY}", MODEL_API_KEY)
    data: dict[str, Any] = json.loads(text)
    return data


def test_there_is_a_fixture_per_endpoint() -> None:
    names = {path.stem for path in FIXTURE_FILES}
    assert {"v2_code_completions", "v2_code_generations", "v2_chat_agent", "v1_chat_agent"} <= names
    assert sum(name.startswith("v1_prompts_") for name in names) >= 13


def test_there_are_gitlab_18_fixtures_for_each_changed_shape() -> None:
    names = {path.stem for path in FIXTURE_FILES}
    assert {
        "gl18_v2_code_completions",
        "gl18_v2_code_generations",
        "gl18_v4_code_suggestions_completion",
        "gl18_v4_code_suggestions_generation",
        "gl18_v2_chat_agent",
        "gl18_v2_chat_agent_duo_core_cutoff",
        "gl18_v1_prompts_categorize_question",
    } <= names
    assert sum(name.startswith("gl18_v1_prompts_") for name in names) >= 9


def _v4_model(metadata: dict[str, Any]) -> None:
    assert {"engine", "name", "lang"} <= set(metadata["model"])


def check_shape(kind: str, response_body: bytes) -> None:
    if kind in {"completion", "completion18"}:
        data = orjson.loads(response_body)
        assert data["object"] == "text_completion"
        assert {"id", "model", "choices", "created", "experiments"} <= set(data)
        assert data["choices"][0]["text"].strip()
        if kind == "completion18":  # GitLab 18's additions
            assert data["metadata"] == {"enabled_feature_flags": []}
            assert isinstance(data["model"]["region"], str)
            usage = data["model"]["tokens_consumption_metadata"]
            assert isinstance(usage["max_output_tokens_used"], bool)
            assert usage["output_tokens"] > 0
    elif kind == "v4_json":
        data = orjson.loads(response_body)
        assert data["choices"][0]["text"].strip()
        _v4_model(data["metadata"])
    elif kind == "v4_sse":
        events = [block for block in response_body.decode().split("\n\n") if block]
        names = [block.split("\n", 1)[0] for block in events]
        assert names[0] == "event: stream_start" and names[-1] == "event: stream_end"
        assert set(names[1:-1]) == {"event: content_chunk"}
        start = orjson.loads(events[0].split("data: ", 1)[1])
        _v4_model(start["metadata"])
        chunk = orjson.loads(events[1].split("data: ", 1)[1])
        assert chunk["choices"][0]["delta"]["content"]
        assert events[-1].endswith("data: null")
    elif kind == "ndjson18":
        lines = [orjson.loads(line) for line in response_body.splitlines() if line]
        deltas = [line for line in lines if line["type"] == "final_answer_delta"]
        assert deltas and all("finish_reason" in line["data"] for line in deltas)
        assert deltas[-1]["data"]["finish_reason"] == "stop"
        assert lines[-1]["type"] == "usage"
        [counts] = lines[-1]["data"]["usage"].values()
        assert set(counts) == {"input_tokens", "output_tokens"}
    elif kind == "duo_core_cutoff":
        assert orjson.loads(response_body) == {
            "detail": "Duo Core no longer authorized to access Duo Classic Chat"
        }
    elif kind == "raw_text":
        assert response_body.strip()
        assert not response_body.startswith(b"data:")  # raw deltas, no SSE framing
    elif kind == "chat_v1":
        data = orjson.loads(response_body)
        assert isinstance(data["response"], str) and data["response"].strip()
        assert {"provider", "model", "timestamp"} <= set(data["metadata"])
    elif kind == "ndjson":
        lines = [orjson.loads(line) for line in response_body.splitlines() if line]
        assert lines and lines[0]["type"] == "final_answer_delta"
        assert all(line["type"] in {"final_answer_delta", "usage"} for line in lines)
    elif kind == "json_string":
        data = orjson.loads(response_body)
        assert isinstance(data, str) and data.strip()
    elif kind == "definitions":
        data = orjson.loads(response_body)
        assert set(data) == {"models", "unit_primitives"}
    else:
        raise AssertionError(f"unknown kind {kind}")


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda path: path.stem)
async def test_gitlab_shaped_request_succeeds(gw: Harness, path: Path) -> None:
    fixture = load(path, gw.model.endpoint)
    headers = {**GITLAB_HEADERS, **fixture.get("headers", {})}
    if fixture["scopes"]:
        headers.update(gw.headers(gw.token(scopes=fixture["scopes"])))
    response = await gw.client.request(
        fixture["method"], fixture["path"], json=fixture["body"], headers=headers
    )
    expect = fixture["expect"]
    assert response.status_code == expect["status"], response.text
    assert response.headers["content-type"].startswith(expect["content_type"])
    assert response.headers["x-request-id"]
    check_shape(expect["kind"], response.content)
    if fixture["body"] is not None and expect["status"] == 200:
        # The model was called with the key and the model name the instance configured.
        [call] = gw.model.requests
        assert call.headers["Authorization"] == f"Bearer {MODEL_API_KEY}"
        assert call.json["model"].endswith("-local")

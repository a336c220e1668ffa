"""Every AI feature end to end: PAT → instance → JWT → gateway → llama.cpp with the tiny model.

One test per feature in ``enclave.common.features.Feature``: code completions and generations
(``/api/v4/code_suggestions/completions``), Duo Chat and its slash-command sub-features
(``/api/v4/chat/completions`` → ``/v1/chat/<invokable>``), and each ``/api/v4/ai/<feature>``
endpoint (→ the gateway's prompt registry, ``/v1/prompts/<prompt id>``). The tiny GGUF model
answers "return a + b\\n" to everything, so the text that comes back proves the whole path.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from enclave.common.features import Feature
from enclave.instance.api.ai_features import AI_FEATURES
from enclave.instance.bootstrap import EMBEDDED_MODEL_NAME
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

ADMIN = "/api/v4/admin/ai"
TIMEOUT_S = 120
CODE_TASK = {"code": "def add(a, b):\n    pass\n", "file_name": "calc.py", "language": "Python"}
DIFF = (
    "--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n-    pass\n+    return a + b\n"
)

# /api/v4/ai/<path> → a body it accepts.
AI_BODIES: dict[str, dict[str, Any]] = {
    "generate_commit_message": {"diff": DIFF},
    "summarize_new_merge_request": {"diff": DIFF, "title": "Implement add"},
    "summarize_review": {"draft_notes": ["Add a docstring.", "Add a test for add()."]},
    "review_merge_request": {"diff": DIFF, "title": "Implement add", "description": "Adds."},
    "explain_vulnerability": {
        "title": "SQL injection",
        "description": "User input reaches a SQL query unescaped.",
        "identifiers": ["CWE-89"],
        "file_name": "db.py",
        "code": "cur.execute(\"SELECT * FROM t WHERE n = '%s'\" % name)",
    },
    "resolve_vulnerability": {
        "name": "SQL injection",
        "description": "User input reaches a SQL query unescaped.",
        "identifiers": ["CWE-89"],
        "file_name": "db.py",
        "source_code": "import db\ncur.execute(\"SELECT * FROM t WHERE n = '%s'\" % name)\n",
        "vulnerable_code": "cur.execute(\"SELECT * FROM t WHERE n = '%s'\" % name)",
    },
    "glab_ask_git_command": {"prompt": "undo my last commit but keep the changes"},
    "troubleshoot_job": {"job_log": "$ pytest\nE   AssertionError: assert add(1, 2) == 3\n"},
    "explain_code": CODE_TASK,
    "write_tests": CODE_TASK,
    "refactor_code": CODE_TASK,
    "fix_code": {**CODE_TASK, "question": "it returns None"},
}
SLASH_COMMANDS = {
    Feature.DUO_CHAT_EXPLAIN_CODE: "/explain",
    Feature.DUO_CHAT_WRITE_TESTS: "/tests",
    Feature.DUO_CHAT_REFACTOR_CODE: "/refactor",
    Feature.DUO_CHAT_FIX_CODE: "/fix",
    Feature.DUO_CHAT_TROUBLESHOOT_JOB: "/troubleshoot",
}
COMPLETION = {
    "current_file": {
        "file_name": "calc.py",
        "content_above_cursor": "def add(a, b):\n    ",
        "content_below_cursor": "\n",
    },
    "intent": "completion",
    "stream": False,
}
GENERATION = {
    "current_file": {
        "file_name": "calc.py",
        "content_above_cursor": "# Write a function that adds two numbers\n",
        "content_below_cursor": "",
    },
    "intent": "generation",
    "stream": False,
}


def headers(stack: Stack) -> dict[str, str]:
    return {"PRIVATE-TOKEN": stack.admin_token}


@pytest.fixture(scope="module")
def assigned(stack: Stack) -> Stack:
    """Every feature served by the embedded model (bootstrap does so for the features whose
    family matrix allows it; set explicitly so the test does not depend on that)."""
    models = httpx.get(
        f"{stack.instance_url}{ADMIN}/self_hosted_models", headers=headers(stack), timeout=30
    ).json()
    [embedded] = [m for m in models if m["name"] == EMBEDDED_MODEL_NAME]
    for spec in AI_FEATURES:
        if spec.feature in SLASH_COMMANDS:
            continue  # chat sub-features follow duo_chat
        response = httpx.put(
            f"{stack.instance_url}{ADMIN}/feature_settings/{spec.feature.value}",
            json={"provider": "self_hosted", "self_hosted_model_id": embedded["id"]},
            headers=headers(stack),
            timeout=30,
        )
        assert response.status_code == 200, response.text
    return stack


def test_every_feature_has_an_end_to_end_test() -> None:
    covered = (
        {Feature.CODE_COMPLETIONS, Feature.CODE_GENERATIONS, Feature.DUO_CHAT}
        | set(SLASH_COMMANDS)
        | {spec.feature for spec in AI_FEATURES}
    )
    assert covered == set(Feature)
    assert set(AI_BODIES) == {spec.path for spec in AI_FEATURES}


def test_code_completions(assigned: Stack, expected_answer: str) -> None:
    response = httpx.post(
        f"{assigned.instance_url}/api/v4/code_suggestions/completions",
        json=COMPLETION,
        headers=headers(assigned),
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    assert [c["text"] for c in response.json()["choices"]] == [expected_answer]


def test_code_generations(assigned: Stack, expected_answer: str) -> None:
    response = httpx.post(
        f"{assigned.instance_url}/api/v4/code_suggestions/completions",
        json=GENERATION,
        headers=headers(assigned),
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    [choice] = response.json()["choices"]
    assert expected_answer.strip() in choice["text"]


def chat(stack: Stack, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{stack.instance_url}/api/v4/chat/completions",
        json=body,
        headers=headers(stack),
        timeout=TIMEOUT_S,
    )


def test_duo_chat(assigned: Stack, expected_answer: str) -> None:
    response = chat(
        assigned,
        {
            "content": "How do I add two numbers?",
            "current_file": {"file_name": "calc.py", "selected_text": "def add(a, b):"},
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == expected_answer


def test_duo_chat_streamed(assigned: Stack, expected_answer: str) -> None:
    with httpx.stream(
        "POST",
        f"{assigned.instance_url}/api/v4/chat/completions",
        json={"content": "How do I add two numbers?", "stream": True},
        headers=headers(assigned),
        timeout=TIMEOUT_S,
    ) as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers
        text = "".join(response.iter_text())
    assert text == expected_answer


@pytest.mark.parametrize("feature", sorted(SLASH_COMMANDS), ids=str)
def test_duo_chat_sub_feature(assigned: Stack, expected_answer: str, feature: Feature) -> None:
    response = chat(assigned, {"content": f"{SLASH_COMMANDS[feature]} def add(a, b): pass"})
    assert response.status_code == 200, response.text
    assert response.json() == expected_answer


@pytest.mark.parametrize("path", sorted(AI_BODIES))
def test_ai_feature(assigned: Stack, expected_answer: str, path: str) -> None:
    [spec] = [s for s in AI_FEATURES if s.path == path]
    response = httpx.post(
        f"{assigned.instance_url}/api/v4/ai/{path}",
        json=AI_BODIES[path],
        headers=headers(assigned),
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["feature"] == spec.feature.value
    assert body["model"] == EMBEDDED_MODEL_NAME
    assert expected_answer.strip() in body["response"]


@pytest.mark.parametrize("path", ["generate_commit_message", "explain_code"])
def test_ai_feature_streamed(assigned: Stack, expected_answer: str, path: str) -> None:
    with httpx.stream(
        "POST",
        f"{assigned.instance_url}/api/v4/ai/{path}",
        json={**AI_BODIES[path], "stream": True},
        headers=headers(assigned),
        timeout=TIMEOUT_S,
    ) as response:
        assert response.status_code == 200, response.read().decode()
        assert "content-length" not in response.headers
        text = "".join(response.iter_text())
    assert expected_answer.strip() in text


def test_ai_feature_without_a_token_is_401(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.instance_url}/api/v4/ai/generate_commit_message",
        json={"diff": DIFF},
        timeout=30,
    )
    assert response.status_code == 401
    assert response.headers["x-gitlab-error-origin"] == "monolith"

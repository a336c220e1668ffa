"""Code Suggestions logic without I/O: validation, completion vs generation, the gateway body."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from enclave.instance.code_suggestions import (
    CompletionRequest,
    describe_validation_error,
    detect_intent,
    feature_for,
    gateway_body,
    gateway_path,
    generation_prompt,
    instruction_for,
)
from enclave.instance.features import Feature, ResolvedModel

MODEL = ResolvedModel(
    feature=Feature.CODE_COMPLETIONS,
    model_id=1,
    name="embedded-smollm2",
    family="general",
    provider="api",
    endpoint="http://model:8000/v1",
    identifier="custom_openai/smollm2",
    api_key="enclkey-secret",
)


def request(
    above: str,
    below: str = "",
    file_name: str = "app.py",
    language: str | None = None,
    **extra: Any,
) -> CompletionRequest:
    current_file = {
        "file_name": file_name,
        "content_above_cursor": above,
        "content_below_cursor": below,
    }
    if language is not None:
        current_file["language_identifier"] = language
    return CompletionRequest.model_validate({"current_file": current_file, **extra})


@pytest.mark.parametrize(
    ("above", "below", "file_name", "intent"),
    [
        ("def add(a, b):\n    ", "", "app.py", "completion"),
        ("# add two numbers\n", "", "app.py", "generation"),
        (
            "import os\n# add two numbers\n# and return the sum\n    ",
            "\n\n",
            "app.py",
            "generation",
        ),
        ("// sort the list\n", "", "main.go", "generation"),
        ("-- users created this week\n", "", "report.sql", "generation"),
        ("/* parse the header */\n", "", "main.c", "generation"),
        ("/**\n * parse the header\n */\n", "", "main.c", "generation"),
        ("#include <stdio.h>\n", "", "main.c", "completion"),  # not a comment in C
        ("*p = 1;\n", "", "main.c", "completion"),
        ("# add two numbers\n", "return 1\n", "app.py", "completion"),  # code below
        ("# add two numbers", "", "app.py", "completion"),  # still typing the comment
        ("x = 1  # note\n", "", "app.py", "completion"),
        ("", "", "app.py", "completion"),
        ("# question\n", "", "unknown.ext", "generation"),
    ],
)
def test_intent_detection(above: str, below: str, file_name: str, intent: str) -> None:
    assert detect_intent(request(above, below, file_name)) == intent


def test_explicit_intent_wins() -> None:
    assert detect_intent(request("# add\n", intent="completion")) == "completion"
    assert detect_intent(request("x = ", "y", intent="generation")) == "generation"
    assert detect_intent(request("x = ", user_instruction="write a test")) == "generation"


def test_feature_and_path_per_intent() -> None:
    assert feature_for("completion") is Feature.CODE_COMPLETIONS
    assert feature_for("generation") is Feature.CODE_GENERATIONS
    assert gateway_path("completion") == "/v2/code/completions"
    assert gateway_path("generation") == "/v2/code/generations"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "current_file is missing"),
        ({"current_file": {"content_above_cursor": ""}}, "current_file.file_name is missing"),
        ({"current_file": {"file_name": "a.py"}}, "current_file.content_above_cursor is missing"),
        (
            {"current_file": {"file_name": "a" * 256, "content_above_cursor": ""}},
            "current_file.file_name is invalid",
        ),
        (
            {"current_file": {"file_name": "a.py", "content_above_cursor": "x" * 100_001}},
            "current_file.content_above_cursor is invalid",
        ),
        (
            {"current_file": {"file_name": "a.py", "content_above_cursor": ""}, "intent": "x"},
            "intent is invalid",
        ),
    ],
)
def test_validation_messages(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CompletionRequest.model_validate(body)
    assert describe_validation_error(caught.value).startswith(message)


def test_limits_are_inclusive() -> None:
    ok = request("x" * 100_000, "y" * 100_000, file_name="a" * 255)
    assert len(ok.above) == 100_000


def test_completion_body_is_gitlabs() -> None:
    req = request(
        "def add(a, b):\n    ",
        "\n",
        language="python",
        stream=True,
        project_path="group/project",
        project_id=42,
        context=[{"type": "file", "name": "util.py", "content": "def sub(): ..."}],
        unknown_field="ignored",
    )
    assert gateway_body(req, "completion", MODEL) == {
        "project_path": "group/project",
        "project_id": 42,
        "current_file": {
            "file_name": "app.py",
            "language_identifier": "python",
            "content_above_cursor": "def add(a, b):\n    ",
            "content_below_cursor": "\n",
        },
        "stream": True,
        "choices_count": 0,
        "context": [{"type": "file", "name": "util.py", "content": "def sub(): ..."}],
        "telemetry": [],
        "prompt_version": 2,
        "prompt": "",
        "model_provider": "litellm",
        "model_name": "general",
        "model_endpoint": "http://model:8000/v1",
        "model_api_key": "enclkey-secret",
        "model_identifier": "custom_openai/smollm2",
    }


def test_generation_body_carries_a_prompt() -> None:
    req = request("import math\n# area of a circle\n", "")
    body = gateway_body(req, "generation", MODEL)
    assert body["prompt_id"] == "code_suggestions/generations"
    assert body["prompt_version"] == 2
    assert body["model_provider"] == "litellm"
    assert body["prompt"] == generation_prompt(req)
    assert "area of a circle" in body["prompt"]
    assert "import math" in body["prompt"]
    assert "app.py" in body["prompt"]
    assert "</new_code>" in body["prompt"]


def test_instruction_comes_from_comments_and_user_instruction() -> None:
    assert instruction_for(request("# one\n#  two\n")) == "one\ntwo"
    assert instruction_for(request("x = 1\n", user_instruction=" add tests ")) == "add tests"
    assert instruction_for(request("x = 1\n")) == "Write the code that belongs at the cursor."


def test_missing_optional_model_fields_are_left_out() -> None:
    bare = ResolvedModel(
        feature=Feature.CODE_COMPLETIONS,
        model_id=2,
        name="m",
        family="codestral",
        provider="api",
        endpoint="http://m/v1",
        identifier=None,
        api_key=None,
    )
    body = gateway_body(request("x"), "completion", bare)
    assert "model_api_key" not in body and "model_identifier" not in body
    assert "project_path" not in body and "project_id" not in body


def test_long_files_are_trimmed_next_to_the_cursor_in_the_prompt() -> None:
    above = "A" * 50_000 + "NEAR_ABOVE"
    below = "NEAR_BELOW" + "B" * 50_000
    prompt = generation_prompt(request(above, below, intent="generation"))
    assert "NEAR_ABOVE" in prompt and "NEAR_BELOW" in prompt
    assert len(prompt) < 12_000


def test_resolved_model_repr_hides_the_key() -> None:
    assert "enclkey-secret" not in repr(MODEL)

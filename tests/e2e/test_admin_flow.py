"""An administrator registers two models (API and CLI), maps features to them, tests the
connections, and sees it take effect on the next code completion and chat request.

Runs its own stack (module scope, own data dir): it changes feature settings that the shared
session stack's tests rely on.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from enclave.model.tiny_gguf import TINY_ANSWER
from tests.e2e.conftest import Stack, running_stack

pytestmark = pytest.mark.e2e

ADMIN = "/api/v4/admin/ai"
COMPLETION = {
    "current_file": {
        "file_name": "calc.py",
        "content_above_cursor": "def add(a, b):\n    ",
        "content_below_cursor": "\n",
    },
    "intent": "completion",
    "stream": False,
}


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("enclave-admin-flow"), tiny_gguf) as stack:
        yield stack


class Admin:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.headers = {"PRIVATE-TOKEN": stack.admin_token}

    def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        response = httpx.request(
            method,
            f"{self.stack.instance_url}{path}",
            json=body,
            headers=self.headers,
            timeout=60,
        )
        assert response.status_code == expect, response.text
        return response.json()

    def cli(self, *args: str, stdin: str | None = None) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "enclave", *args, "--json"],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.stack.env,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return orjson.loads(done.stdout)


def test_register_map_test_and_use_two_models(own_stack: Stack) -> None:
    stack = own_stack
    admin = Admin(stack)
    key = stack.model_api_key

    # Model A through the REST API.
    model_a = admin.call(
        "POST",
        f"{ADMIN}/self_hosted_models",
        {
            "name": "tiny-codestral",
            "model": "codestral",
            "endpoint": stack.model_url,
            "identifier": "custom_openai/smollm2",
            "api_token": key,
        },
        expect=201,
    )
    assert model_a["has_api_token"] is True and "api_token" not in model_a

    # Model B through the CLI, the key on standard input (never on the command line).
    model_b = admin.cli(
        "models",
        "add",
        "--name",
        "tiny-mistral",
        "--family",
        "mistral",
        "--identifier",
        "custom_openai/smollm2-chat",
        "--endpoint",
        stack.model_url,
        "--api-key-file",
        "-",
        stdin=key,
    )
    assert model_b["model"] == "mistral" and model_b["has_api_token"] is True

    # Both connections work, through the gateway's model_configuration/check.
    for model in (model_a, model_b):
        result = admin.call("POST", f"{ADMIN}/self_hosted_models/{model['id']}/test")
        assert result["success"] is True, result
        assert result["result"] == "ok" and result["gateway_status"] == 200

    # A wrong key is reported as the model refusing it, without echoing the key.
    wrong = admin.call(
        "POST",
        f"{ADMIN}/self_hosted_models/test",
        {
            "name": "wrong-key",
            "model": "mistral",
            "endpoint": stack.model_url,
            "identifier": "custom_openai/smollm2",
            "api_token": "not-the-key-0123456789",
        },
    )
    assert wrong["success"] is False, wrong
    assert wrong["result"] == "model_error"
    assert wrong["gateway_status"] == 421 and wrong["model_status"] == 401
    assert "refused the API key" in wrong["message"]
    assert "not-the-key-0123456789" not in wrong["message"]

    # Map code completions to A (API) and Duo Chat to B (CLI).
    completions = admin.call(
        "PUT",
        f"{ADMIN}/feature_settings/code_completions",
        {"provider": "self_hosted", "self_hosted_model_id": model_a["id"]},
    )
    assert completions["self_hosted_model"]["id"] == model_a["id"]
    [chat_setting] = admin.cli("features", "set", "duo_chat", "--model", "tiny-mistral")
    assert chat_setting["self_hosted_model"]["id"] == model_b["id"]
    read_back = admin.call("GET", f"{ADMIN}/feature_settings/duo_chat")
    assert read_back["effective_self_hosted_model"]["name"] == "tiny-mistral"

    # The next completion goes to A: the gateway names A's identifier in its answer.
    response = httpx.post(
        f"{stack.instance_url}/api/v4/code_suggestions/completions",
        json=COMPLETION,
        headers=admin.headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == "custom_openai/smollm2"
    assert [choice["text"] for choice in body["choices"]] == [TINY_ANSWER]

    # The chat question goes to B through the gateway's /v1/chat/agent: the CLI changed it from
    # another process, which the instance picks up within cache_poll_s (1 s).
    deadline = time.monotonic() + 5.0
    while True:
        response = httpx.post(
            f"{stack.instance_url}/api/v4/chat/completions",
            json={"content": "How do I add two numbers?"},
            headers=admin.headers,
            timeout=60,
        )
        assert response.status_code == 200, response.text
        if response.json() == TINY_ANSWER or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert response.json() == TINY_ANSWER

    # Disabled: the next completion is refused by the instance.
    admin.call("PUT", f"{ADMIN}/feature_settings/code_completions", {"provider": "disabled"})
    response = httpx.post(
        f"{stack.instance_url}/api/v4/code_suggestions/completions",
        json=COMPLETION,
        headers=admin.headers,
        timeout=60,
    )
    assert response.status_code == 403, response.text
    assert "disabled" in response.text
    assert "code_completions" in response.text

"""Usage over every path with the real processes: a chat through the instance (counted by
the instance) and one through the OpenAI-compatible API (counted by the gateway, pushed to the
instance with the routes secret) each count once, for the right user, with tokens."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from enclave.supervisor import ensure_routes_secret
from tests.e2e.conftest import Stack, running_stack

pytestmark = pytest.mark.e2e

WAIT_S = 30.0


@pytest.fixture(scope="module")
def usage_stack(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("enclave-usage")
    secret = ensure_routes_secret(data_dir / "keys" / "gateway-routes.secret")
    with running_stack(
        data_dir,
        tiny_gguf,
        ENCLAVE_INSTANCE__GATEWAY_ROUTES_SECRET_FILE=str(secret),
        ENCLAVE_GATEWAY__GATEWAY_ROUTES_SECRET_FILE=str(secret),
        ENCLAVE_GATEWAY__ROUTES_REFRESH_S="1",
        # Fast flush and push, so the test need not wait the default 10 s twice.
        ENCLAVE_INSTANCE__USAGE_FLUSH_S="0.5",
        ENCLAVE_GATEWAY__USAGE_PUSH_S="0.5",
    ) as stack:
        yield stack


def chat_rows(stack: Stack) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{stack.instance_url}/api/v4/admin/ai/usage",
        params={"group_by": "user,feature"},
        headers={"PRIVATE-TOKEN": stack.admin_token},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return [r for r in response.json()["rows"] if r["feature"] == "duo_chat"]


def wait_for_requests(stack: Stack, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT_S
    rows = chat_rows(stack)
    while sum(r["requests"] for r in rows) < count and time.monotonic() < deadline:
        time.sleep(0.5)
        rows = chat_rows(stack)
    return rows


def test_instance_and_openai_paths_each_count_once(usage_stack: Stack) -> None:
    stack = usage_stack
    headers = {"PRIVATE-TOKEN": stack.admin_token}
    me = httpx.get(f"{stack.instance_url}/api/v4/user", headers=headers, timeout=30).json()

    answered = httpx.post(
        f"{stack.instance_url}/api/v4/chat/completions",
        json={"content": "hello"},
        headers=headers,
        timeout=120,
    )
    assert answered.status_code == 200, answered.text
    access = httpx.post(
        f"{stack.instance_url}/api/v4/ai/openai/direct_access", headers=headers, timeout=30
    ).json()
    client = openai.OpenAI(
        base_url=access["base_url"], api_key=access["token"], timeout=120, max_retries=0
    )
    client.chat.completions.create(
        model="duo_chat", messages=[{"role": "user", "content": "hello"}]
    )

    rows = wait_for_requests(stack, 2)
    assert [(r["user_id"], r["requests"]) for r in rows] == [(me["id"], 2)], rows
    assert rows[0]["output_tokens"] > 0
    # Nothing arrives later: the instance's own call was not also counted by the gateway.
    time.sleep(2)
    assert sum(r["requests"] for r in chat_rows(stack)) == 2

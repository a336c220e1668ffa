"""Smoke test of the default model a fresh install serves: SmolLM2-135M-Instruct on llama.cpp.

No exact text (the model is a real LLM); it must load, require its API key and answer a chat
and a completion through the OpenAI-compatible API.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from enclave.common.net import free_port
from enclave.supervisor import Role
from tests.e2e.conftest import stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data_dir = tmp_path_factory.mktemp("smollm2-data")
    port = free_port()
    role = Role("model", ["model", "--port", str(port)], f"http://127.0.0.1:{port}/health")
    role.start(data_dir / "logs", stack_env(data_dir))
    try:
        for _ in range(1200):  # first start requantises the bundled file once (seconds)
            assert role.alive(), role.log_tail()
            try:
                if httpx.get(role.ready_url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        key = Path(data_dir / "model" / "api-key").read_text().strip()
        yield f"http://127.0.0.1:{port}/v1", key
    finally:
        role.stop()


def test_smollm2_answers_a_chat(smollm2: tuple[str, str]) -> None:
    base_url, key = smollm2
    response = httpx.post(
        f"{base_url}/chat/completions",
        json={"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] > 0


def test_smollm2_answers_a_completion(smollm2: tuple[str, str]) -> None:
    base_url, key = smollm2
    response = httpx.post(
        f"{base_url}/completions",
        json={"prompt": "def add(a, b):\n", "max_tokens": 16},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"]


def test_smollm2_requires_its_api_key(smollm2: tuple[str, str]) -> None:
    base_url, _ = smollm2
    response = httpx.post(
        f"{base_url}/completions", json={"prompt": "x", "max_tokens": 1}, timeout=30
    )
    assert response.status_code == 401

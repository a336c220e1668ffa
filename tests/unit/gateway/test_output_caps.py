"""Finding 4: the embedded model's output length per feature, so that the small CPU model
answers every feature within the default timeout; other models keep the definitions'."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from enclave.gateway import output_caps
from enclave.gateway.models.base import ChatMessage
from enclave.gateway.prompts.definition import ModelParams
from enclave.gateway.prompts.registry import get_registry
from enclave.gateway.targets import ModelTarget, target_request

EMBEDDED = "http://127.0.0.1:41234/v1"


@pytest.fixture()
def embedded() -> Iterator[None]:
    output_caps.install(EMBEDDED + "/")
    yield
    output_caps.install(None)


def request_for(endpoint: str, prompt_id: str, max_tokens: int = 2048) -> int:
    target = ModelTarget(endpoint, "smollm2", "key", False)
    params = ModelParams.model_construct(
        max_tokens=max_tokens, temperature=None, top_p=None, stop=()
    )
    messages = (ChatMessage("user", "hi"),)
    return target_request(target, messages, None, params, prompt_id=prompt_id).max_tokens


def test_the_embedded_model_gets_short_answers(embedded: None) -> None:
    assert request_for(EMBEDDED, "chat/explain_code") == 384
    assert request_for(EMBEDDED, "chat/write_tests") == 384
    assert request_for(EMBEDDED, "chat/troubleshoot_job") == 384
    assert request_for(EMBEDDED, "generate_commit_message") == 128
    assert request_for(EMBEDDED, "some/new_prompt") == output_caps.DEFAULT_EMBEDDED_MAX_TOKENS
    assert request_for(EMBEDDED, "chat/explain_code", max_tokens=100) == 100  # only lowered


def test_other_models_keep_the_definitions_length(embedded: None) -> None:
    assert request_for("http://10.0.0.5:8000/v1", "chat/explain_code") == 2048


def test_without_an_embedded_model_nothing_is_capped() -> None:
    output_caps.install(None)
    assert request_for(EMBEDDED, "chat/explain_code") == 2048


def test_every_prompt_with_a_cap_exists() -> None:
    """A renamed prompt must not silently lose its cap."""
    registry = get_registry()
    for prompt_id in output_caps.EMBEDDED_MAX_TOKENS:
        assert registry.resolve(prompt_id, "general") is not None, prompt_id

"""GET /v1/models/definitions: GitLab's public model list, for Enclave's model families."""

from __future__ import annotations

import pytest
from gateway_fakes import Harness

from enclave.common.features import COMPATIBLE_FAMILIES, Feature

pytestmark = pytest.mark.anyio

# The keys GitLab's gateway sends for each entry (ai_gateway/api/v1/models/get_definitions.py).
MODEL_KEYS = {"name", "identifier", "provider", "deprecation", "description", "cost_indicator"}
UNIT_PRIMITIVE_KEYS = {
    "feature_setting",
    "default_model",
    "default_models",
    "models_for_tags",
    "models_for_size_preference",
    "selectable_models",
    "beta_models",
    "deprecated_models",
    "dev",
    "unit_primitives",
}


async def test_definitions_need_no_token_and_have_gitlabs_shape(gw: Harness) -> None:
    response = await gw.client.get("/v1/models/definitions")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert set(data) == {"models", "unit_primitives"}
    assert all(set(model) == MODEL_KEYS for model in data["models"])
    assert all(set(entry) == UNIT_PRIMITIVE_KEYS for entry in data["unit_primitives"])


async def test_every_feature_lists_exactly_its_compatible_families(gw: Harness) -> None:
    data = (await gw.client.get("/v1/models/definitions")).json()
    by_feature = {entry["feature_setting"]: entry for entry in data["unit_primitives"]}
    assert set(by_feature) == {feature.value for feature in Feature}
    identifiers = {model["identifier"] for model in data["models"]}
    for feature in Feature:
        entry = by_feature[feature.value]
        assert set(entry["selectable_models"]) == COMPATIBLE_FAMILIES[feature]
        assert set(entry["selectable_models"]) <= identifiers
        assert set(entry["beta_models"]) < set(entry["selectable_models"])


async def test_scopes_and_release_states(gw: Harness) -> None:
    data = (await gw.client.get("/v1/models/definitions")).json()
    by_feature = {entry["feature_setting"]: entry for entry in data["unit_primitives"]}
    assert by_feature["code_completions"]["unit_primitives"] == ["complete_code"]
    assert by_feature["duo_chat_explain_code"]["unit_primitives"] == ["explain_code", "duo_chat"]
    # Mistral is GA, CodeGemma beta, Qwen experimental (not GA either).
    completions = by_feature["code_completions"]
    assert "mistral" not in completions["beta_models"]
    assert {"codegemma", "qwen"} <= set(completions["beta_models"])
    names = {model["identifier"]: model["name"] for model in data["models"]}
    assert names["deepseekcoder"] == "DeepSeek Coder"
    assert "gemini" not in names  # no feature here accepts it


async def test_definitions_refuse_other_methods(gw: Harness) -> None:
    response = await gw.client.post("/v1/models/definitions", json={})
    assert response.status_code == 405

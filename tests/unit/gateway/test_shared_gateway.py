"""Shared-gateway mode: vendor models per feature with the gateway's credentials, per-instance
controls (features, rate limits, own models), usage metrics per instance, and trusted-issuer
reload that refuses a removed instance's tokens at once.

The "vendor" is a second OpenAI-compatible fake on loopback (the wire formats of the other
vendors are the provider tests' business; the end-to-end test uses Anthropic's).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from gateway_fakes import FakeIssuer, FakeModel, Harness, HarnessFactory, Keys, jwk_of

from enclave.common import wire
from enclave.config import GatewaySettings, TrustedIssuer, VendorModel, load_settings
from enclave.gateway.config_watch import ConfigWatcher
from enclave.gateway.tenants import VendorSetupError, vendor_target

pytestmark = pytest.mark.anyio

VENDOR_KEY = "sk-vendor-held-by-the-gateway"
VENDOR_KEY_ENV = "ENCLAVE_TEST_VENDOR_KEY"
MODEL_FIELDS = ("model_provider", "model_name", "model_endpoint", "model_api_key")


@pytest.fixture
async def vendor() -> AsyncIterator[FakeModel]:
    model = FakeModel(text="    return a + b  # vendor\n")
    await model.start()
    yield model
    await model.stop()


@pytest.fixture
async def second_issuer(keys: Keys) -> AsyncIterator[FakeIssuer]:
    issuer = FakeIssuer()
    await issuer.start()
    issuer.jwks = {"keys": [jwk_of(keys.rsa_other, "key-1")]}
    yield issuer
    await issuer.stop()


def vendored_body(gw: Harness) -> dict[str, Any]:
    """A code completion as an instance sends it for a vendored feature: no model."""
    body = gw.body()
    for name in (*MODEL_FIELDS, "model_identifier"):
        body.pop(name)
    return body


async def shared(
    make_harness: HarnessFactory,
    vendor: FakeModel,
    second: FakeIssuer,
    monkeypatch: pytest.MonkeyPatch,
    **overrides: Any,
) -> Harness:
    monkeypatch.setenv(VENDOR_KEY_ENV, VENDOR_KEY)
    issuers = overrides.pop("issuers", [{"url": second.base}])
    return await make_harness(
        routes=False,
        trusted_issuers=issuers,
        vendor_models={
            "code_completions": {
                "provider": "openai",
                "model": "vendor-coder",
                "family": "codestral",
                "endpoint": vendor.endpoint,
                "api_key_env": VENDOR_KEY_ENV,
                "max_tokens": 77,
            }
        },
        **overrides,
    )


def second_token(gw: Harness, second: FakeIssuer, **claims: Any) -> dict[str, str]:
    token = gw.token(iss=second.base, key=gw.keys.rsa_other, **claims)
    return gw.headers(token)


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    raise AssertionError(f"no {name}{{{wanted}}} in /metrics")


async def test_a_vendored_request_uses_the_gateways_vendor_model_and_key(
    make_harness: HarnessFactory,
    vendor: FakeModel,
    second_issuer: FakeIssuer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = await shared(make_harness, vendor, second_issuer, monkeypatch)
    headers = second_token(gw, second_issuer)
    response = await gw.complete(vendored_body(gw), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"].strip() == "return a + b  # vendor"
    [call] = vendor.requests
    assert call.headers["Authorization"] == f"Bearer {VENDOR_KEY}"
    assert call.json["model"] == "vendor-coder"
    assert call.json["max_tokens"] == 77  # the operator's parameter over the prompt's
    assert gw.model.requests == []  # the instance's own model is never called

    # Usage per instance and feature, for the operator.
    text = (await gw.client.get("/metrics")).text
    labels = {"instance": second_issuer.base, "feature": "code_completions"}
    assert metric(text, "enclave_gateway_instance_requests_total", **labels) == 1
    assert metric(text, "enclave_gateway_instance_tokens_total", direction="input", **labels) == 27
    assert metric(text, "enclave_gateway_instance_tokens_total", direction="output", **labels) == 9
    assert VENDOR_KEY not in text


async def test_own_models_are_refused_in_shared_mode_unless_allowed(
    make_harness: HarnessFactory,
    vendor: FakeModel,
    second_issuer: FakeIssuer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = await shared(
        make_harness,
        vendor,
        second_issuer,
        monkeypatch,
        issuers=[{"url": second_issuer.base}, {"url": "http://trusting.example"}],
    )
    response = await gw.complete(gw.body(), headers=second_token(gw, second_issuer))
    assert response.status_code == 403
    assert "allow_self_hosted_models" in response.json()["detail"]
    assert gw.model.requests == [] and vendor.requests == []

    allowed = await shared(
        make_harness,
        vendor,
        second_issuer,
        monkeypatch,
        issuers=[{"url": second_issuer.base, "allow_self_hosted_models": True}],
    )
    response = await allowed.complete(allowed.body(), headers=second_token(allowed, second_issuer))
    assert response.status_code == 200, response.text
    assert len(allowed.model.requests) == 1


async def test_features_and_rate_limits_are_per_instance(
    make_harness: HarnessFactory,
    vendor: FakeModel,
    second_issuer: FakeIssuer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = await shared(
        make_harness,
        vendor,
        second_issuer,
        monkeypatch,
        issuers=[
            {
                "url": second_issuer.base,
                "allowed_features": ["code_completions"],
                "rate_limit_rps": 0.001,
                "rate_limit_burst": 2,
            }
        ],
    )
    headers = second_token(gw, second_issuer)
    refused = await gw.complete(vendored_body(gw), "/v2/code/generations", headers=headers)
    assert refused.status_code == 403
    assert "code_generations is not enabled" in refused.json()["detail"]
    # Burst of 2 (the refused generation counted as one): the next is one too many.
    assert (await gw.complete(vendored_body(gw), headers=headers)).status_code == 200
    limited = await gw.complete(vendored_body(gw), headers=headers)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    text = (await gw.client.get("/metrics")).text
    assert metric(text, "enclave_gateway_instance_rate_limited_total", instance=second_issuer.base)
    assert metric(text, "enclave_gateway_instance_rate_limit_rps", instance=second_issuer.base) == (
        0.001
    )


async def test_removing_an_instance_refuses_its_tokens_at_once(
    make_harness: HarnessFactory,
    vendor: FakeModel,
    second_issuer: FakeIssuer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    gw = await shared(make_harness, vendor, second_issuer, monkeypatch)
    headers = second_token(gw, second_issuer)
    assert (await gw.complete(vendored_body(gw), headers=headers)).status_code == 200

    # The operator edits the config file; the watcher applies it (what the gateway's
    # background task does every config_reload_s).
    gateway = gw.app.state.gateway
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\ntrusted_issuers = [{{url = "{second_issuer.base}"}}]\n')
    watcher = ConfigWatcher(config, 1, gateway.reload)
    config.write_text(f'[gateway]\ntrusted_issuers = [{{url = "{gw.issuer.base}"}}]\n')
    assert watcher.check()
    assert watcher.check() is False  # unchanged: nothing to do
    response = await gw.complete(vendored_body(gw), headers=headers)  # a cached token
    assert response.status_code == 401
    assert "untrusted issuer" in response.json()["error"]

    # A broken file keeps the last good list.
    config.write_text("[gateway]\ntrusted_issuers = 3\n")
    assert watcher.check() is False
    assert list(gateway.stores) == [gw.issuer.base]
    assert (await gw.complete(vendored_body(gw))).status_code == 200  # the other one is served


async def test_an_untrusted_instance_does_not_learn_the_others(
    make_harness: HarnessFactory,
    vendor: FakeModel,
    second_issuer: FakeIssuer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = await shared(make_harness, vendor, second_issuer, monkeypatch)
    stranger = gw.headers(gw.token(iss="https://stranger.example"))
    response = await gw.complete(vendored_body(gw), headers=stranger)
    assert response.status_code == 401
    message = response.json()["error"]
    assert "untrusted issuer (this gateway trusts 2 instances" in message
    assert second_issuer.base not in message and gw.issuer.base not in message


async def test_the_shared_gateway_checks_its_own_audience(
    make_harness: HarnessFactory,
    vendor: FakeModel,
    second_issuer: FakeIssuer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = await shared(
        make_harness, vendor, second_issuer, monkeypatch, audience="enclave-shared-ai-gateway"
    )
    # A token minted for the instance's self-hosted gateway is worthless here.
    response = await gw.complete(vendored_body(gw), headers=second_token(gw, second_issuer))
    assert response.status_code == 401
    assert "wrong audience" in response.json()["error"]
    headers = second_token(gw, second_issuer, aud="enclave-shared-ai-gateway")
    assert (await gw.complete(vendored_body(gw), headers=headers)).status_code == 200


async def test_no_vendor_model_for_a_feature_is_a_precise_403(
    make_harness: HarnessFactory,
    vendor: FakeModel,
    second_issuer: FakeIssuer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = await shared(make_harness, vendor, second_issuer, monkeypatch)
    token = gw.token(
        iss=second_issuer.base,
        key=gw.keys.rsa_other,
        scopes=[wire.UP_COMPLETE_CODE, "duo_chat", "generate_commit_message"],
    )
    response = await gw.client.post(
        "/v1/prompts/generate_commit_message",
        json={"inputs": {"diff": "+x"}, "stream": False},
        headers=gw.headers(token),
    )
    assert response.status_code == 403
    assert "no vendor model for generate_commit_message" in response.json()["detail"]


def test_vendor_model_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown feature"):
        GatewaySettings(vendor_models={"nope": {"provider": "anthropic", "model": "m"}})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="unknown family"):
        VendorModel(provider="anthropic", model="m", family="nope")
    with pytest.raises(ValueError, match="unknown feature"):
        TrustedIssuer(url="https://a.example", allowed_features=["nope"])
    missing = VendorModel(
        provider="openai", model="m", family="gpt", api_key_file=Path("/nonexistent/key")
    )
    with pytest.raises(VendorSetupError, match="cannot read api_key_file"):
        vendor_target("duo_chat", missing)
    no_endpoint = VendorModel(provider="openai", model="m", family="gpt")
    with pytest.raises(VendorSetupError, match="model_endpoint is required"):
        vendor_target("duo_chat", no_endpoint)


def test_shared_mode_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENCLAVE_CONFIG", raising=False)
    monkeypatch.setenv(
        "ENCLAVE_GATEWAY__VENDOR_MODELS",
        '{"duo_chat": {"provider": "anthropic", "model": "claude-x", "api_key_env": "K"}}',
    )
    gateway = load_settings().gateway
    assert gateway.shared_mode
    assert gateway.vendor_models["duo_chat"].api_key_env == "K"

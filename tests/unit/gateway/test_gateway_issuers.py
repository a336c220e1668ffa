"""Trusted issuers: one instance (self-hosted gateway) or a list (shared gateway)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from gateway_fakes import FakeIssuer, Harness, HarnessFactory, Keys, jwk_of
from pydantic import ValidationError

from enclave.config import EnclaveSettings, GatewaySettings, TrustedIssuer
from enclave.gateway.auth import verify

pytestmark = pytest.mark.anyio


def test_default_is_the_single_issuer_url() -> None:
    settings = GatewaySettings(issuer_url="http://instance:8080/", jwks_url="http://keys/jwks")
    [issuer] = settings.trusted_issuer_list()
    assert (issuer.url, issuer.jwks_url) == ("http://instance:8080/", "http://keys/jwks")
    assert [i.url for i in GatewaySettings().trusted_issuer_list()] == ["http://127.0.0.1:8080"]


def test_trusted_issuers_replace_the_default_issuer_url() -> None:
    settings = GatewaySettings(
        trusted_issuers=[TrustedIssuer(url="https://a.example"), {"url": "https://b.example/"}]  # type: ignore[list-item]
    )
    assert [i.url for i in settings.trusted_issuer_list()] == [
        "https://a.example",
        "https://b.example/",
    ]
    # An explicitly set issuer_url is trusted as well; duplicates collapse.
    settings = GatewaySettings(
        issuer_url="https://b.example",
        trusted_issuers=[{"url": "https://a.example"}, {"url": "https://b.example/"}],  # type: ignore[list-item]
    )
    assert [i.url for i in settings.trusted_issuer_list()] == [
        "https://b.example",
        "https://a.example",
    ]


def test_trusted_issuers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "ENCLAVE_GATEWAY__TRUSTED_ISSUERS",
        '[{"url": "https://a.example", "jwks_file": "/etc/enclave/a.json"}]',
    )
    monkeypatch.delenv("ENCLAVE_CONFIG", raising=False)
    [issuer] = EnclaveSettings().gateway.trusted_issuer_list()
    assert issuer.jwks_file == Path("/etc/enclave/a.json")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"url": "gitlab-ai-gateway"}, "not an http"),
        ({"url": "ftp://a.example"}, "not an http"),
        ({"url": "https://a.example", "jwks_url": "file:///etc/passwd"}, "not an http"),
        ({"url": "https://a.example", "surprise": 1}, "Extra inputs"),
    ],
)
def test_trusted_issuer_validation(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GatewaySettings(trusted_issuers=[entry])  # type: ignore[list-item]


@pytest.fixture
async def second_issuer(keys: Keys) -> AsyncIterator[FakeIssuer]:
    issuer = FakeIssuer()
    await issuer.start()
    # The same key id as the first issuer, a different key: kids are per issuer.
    issuer.jwks = {"keys": [jwk_of(keys.rsa_other, "key-1")]}
    yield issuer
    await issuer.stop()


async def test_shared_gateway_trusts_each_listed_instance(
    make_harness: HarnessFactory, second_issuer: FakeIssuer, keys: Keys
) -> None:
    gw: Harness = await make_harness(trusted_issuers=[{"url": second_issuer.base}])
    assert sorted(gw.app.state.gateway.stores) == sorted([gw.issuer.base, second_issuer.base])
    first = gw.token()
    second = gw.token(iss=second_issuer.base, key=keys.rsa_other)
    assert (await gw.complete(headers=gw.headers(first))).status_code == 200
    assert (await gw.complete(headers=gw.headers(second))).status_code == 200

    # One instance's key cannot speak for another, even under the same kid.
    crossed = gw.token(iss=second_issuer.base, key=keys.rsa)
    response = await gw.complete(headers=gw.headers(crossed))
    assert response.json() == {"error": verify.INVALID_SIGNATURE}
    response = await gw.complete(headers=gw.headers(gw.token(iss="https://c.example")))
    assert response.status_code == 401
    assert "untrusted issuer" in response.json()["error"]
    assert "ENCLAVE_GATEWAY__TRUSTED_ISSUERS" in response.json()["error"]


async def test_one_instance_down_degrades_but_keeps_the_gateway_ready(
    make_harness: HarnessFactory, second_issuer: FakeIssuer
) -> None:
    gw: Harness = await make_harness(trusted_issuers=[{"url": second_issuer.base}])
    assert (await gw.client.get("/monitoring/ready")).json() == {"status": "ok"}
    gw.clock.advance(86400 + 6 * 3600 + 1)
    second_issuer.fail_status = 500
    ready = await gw.client.get("/monitoring/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "degraded"
    [problem] = body["unavailable"]
    assert second_issuer.base in problem
    # The first instance is still served; the second gets 503, not "invalid token".
    assert (await gw.complete()).status_code == 200
    response = await gw.complete(headers=gw.headers(gw.token(iss=second_issuer.base)))
    assert response.status_code == 503

    gw.issuer.fail_status = 500  # now neither can be verified, once the last good keys expire
    gw.clock.advance(86400 + 6 * 3600 + 1)
    ready = await gw.client.get("/monitoring/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"


async def test_per_issuer_static_jwks_file(
    make_harness: HarnessFactory, keys: Keys, tmp_path: Path
) -> None:
    path = tmp_path / "b.json"
    path.write_bytes(orjson.dumps({"keys": [jwk_of(keys.ec, "ec-1", "ES256")]}))
    gw: Harness = await make_harness(
        trusted_issuers=[{"url": "https://offline.example", "jwks_file": str(path)}]
    )
    token = gw.token(iss="https://offline.example", key=keys.ec, kid="ec-1", alg="ES256")
    assert (await gw.complete(headers=gw.headers(token))).status_code == 200

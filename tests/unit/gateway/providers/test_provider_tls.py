"""TLS towards model endpoints: a private CA bundle and a client certificate (mutual TLS)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gateway_fakes import Harness, HarnessFactory
from provider_fakes import FakeProvider
from provider_setup import ANTHROPIC_KEY, success
from wire_fixtures import ANTHROPIC_MODEL

from enclave.config import GatewaySettings
from enclave.gateway.models.tls import TLSSetupError, endpoint_tls

pytestmark = pytest.mark.anyio


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, *items: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
    data = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            data += item.public_bytes(serialization.Encoding.PEM)
        else:
            data += item.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
    path.write_bytes(data)
    return path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Enclave test CA", ca_key, None, ca=True)
    server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    server = _cert("model.internal", server_key, (ca.subject, ca_key), ca=False)
    client = _cert("enclave-gateway", client_key, (ca.subject, ca_key), ca=False)
    return {
        "ca": _write(tmp_path / "ca.pem", ca),
        "server": _write(tmp_path / "server.pem", server, server_key),
        "client": _write(tmp_path / "client.pem", client),
        "client_key": _write(tmp_path / "client-key.pem", client_key),
    }


def _server_context(pki: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki["ca"])
    context.load_cert_chain(pki["server"])
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the gateway must show its certificate
    return context


@pytest.fixture
async def tls_model(pki: dict[str, Path]) -> AsyncIterator[FakeProvider]:
    server = FakeProvider(ssl_context=_server_context(pki))
    await server.start()
    yield server
    await server.stop()


def body(gw: Harness, endpoint: str) -> dict[str, object]:
    return gw.body(
        model_name="claude_3",
        model_endpoint=endpoint,
        model_api_key=ANTHROPIC_KEY,
        model_identifier=f"anthropic/{ANTHROPIC_MODEL}",
    )


async def test_private_ca_and_client_certificate(
    make_harness: HarnessFactory, tls_model: FakeProvider, pki: dict[str, Path]
) -> None:
    gw: Harness = await make_harness(
        model_ca_bundle=pki["ca"],
        model_client_cert=pki["client"],
        model_client_key=pki["client_key"],
    )
    tls_model.script(success("anthropic", stream=False))
    response = await gw.complete(body(gw, tls_model.base))
    assert response.status_code == 200, response.text
    assert tls_model.seen[0].path == "/v1/messages"


async def test_unknown_ca_is_a_clear_tls_error(
    make_harness: HarnessFactory, tls_model: FakeProvider
) -> None:
    gw: Harness = await make_harness(model_retry_backoff_s=0)
    response = await gw.complete(body(gw, tls_model.base))
    assert response.status_code == 503
    assert "TLS handshake with the model endpoint" in response.json()["detail"]
    assert "ENCLAVE_GATEWAY__MODEL_CA_BUNDLE" in response.json()["detail"]
    assert tls_model.seen == []


async def test_per_endpoint_tls_applies_to_that_endpoint_only(
    make_harness: HarnessFactory, tls_model: FakeProvider, pki: dict[str, Path]
) -> None:
    # No gateway-wide CA or certificate: the endpoint's own model_tls entry is what is used.
    gw: Harness = await make_harness(
        model_retry_backoff_s=0,
        model_tls={
            tls_model.base: {
                "ca_bundle": str(pki["ca"]),
                "client_cert": str(pki["client"]),
                "client_key": str(pki["client_key"]),
            }
        },
    )
    tls_model.script(success("anthropic", stream=False))
    response = await gw.complete(body(gw, tls_model.base))
    assert response.status_code == 200, response.text
    assert tls_model.seen[0].path == "/v1/messages"

    # Another endpoint on the same server name but another origin gets no such trust.
    other = FakeProvider(ssl_context=_server_context(pki))
    await other.start()
    try:
        refused = await gw.complete(body(gw, other.base))
    finally:
        await other.stop()
    assert refused.status_code == 503
    assert "ENCLAVE_GATEWAY__MODEL_TLS" in refused.json()["detail"]
    assert other.seen == []


def test_model_tls_keys_must_be_https_origins() -> None:
    with pytest.raises(ValueError, match="https origin"):
        GatewaySettings(model_tls={"http://vllm.internal:8000": {}})
    with pytest.raises(ValueError, match="https origin"):
        GatewaySettings(model_tls={"https://vllm.internal/v1": {}})
    with pytest.raises(ValueError, match="client_key needs client_cert"):
        GatewaySettings(model_tls={"https://vllm.internal": {"client_key": "/k.pem"}})
    settings = GatewaySettings(model_tls={"https://VLLM.internal": {}})
    assert list(settings.model_tls) == ["https://vllm.internal:443"]


def test_an_unreadable_bundle_names_its_setting(tmp_path: Path) -> None:
    settings = GatewaySettings(
        model_tls={"https://vllm.internal:8443": {"ca_bundle": str(tmp_path / "missing.pem")}}
    )
    with pytest.raises(TLSSetupError, match=r"model_tls\['https://vllm.internal:8443'\]"):
        endpoint_tls(settings)

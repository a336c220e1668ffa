"""The instance's client IP allow-list (``instance.allowed_client_cidrs`` / ``trusted_proxies``)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from enclave.config import EnclaveSettings
from enclave.instance.app import create_app
from enclave.instance.bootstrap import initialise

JWKS = "/oauth/discovery/keys"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("client-address") / "data"


@contextmanager
def client_from(data_dir: Path, address: str, **instance: Any) -> Iterator[TestClient]:
    # SQLite only: the middleware does not touch the database.
    settings = EnclaveSettings(data_dir=data_dir, instance=instance)
    app = create_app(settings, boot=initialise(settings))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield TestClient(app, client=(address, 50000))


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.9", "::1", "fd00::5"])
def test_loopback_and_private_clients_are_allowed_by_default(data_dir: Path, address: str) -> None:
    with client_from(data_dir, address) as client:
        assert client.get(JWKS).status_code == 200


@pytest.mark.parametrize("address", ["203.0.113.5", "2001:db8::1", "not-an-ip"])
def test_other_clients_get_a_gitlab_style_403(data_dir: Path, address: str) -> None:
    with client_from(data_dir, address) as client:
        response = client.get(JWKS)
    assert response.status_code == 403
    message = response.json()["message"]
    assert address in message
    assert "ENCLAVE_INSTANCE__ALLOWED_CLIENT_CIDRS" in message
    assert "this instance" in message


def test_the_allow_list_is_configurable(data_dir: Path) -> None:
    with client_from(data_dir, "203.0.113.5", allowed_client_cidrs="203.0.113.0/24") as client:
        assert client.get(JWKS).status_code == 200
    with client_from(data_dir, "127.0.0.1", allowed_client_cidrs="203.0.113.0/24") as client:
        assert client.get(JWKS).status_code == 403


def test_forwarded_for_is_believed_only_from_trusted_proxies(data_dir: Path) -> None:
    public = {"X-Forwarded-For": "203.0.113.5"}
    private = {"X-Forwarded-For": "10.0.0.7"}
    # The peer is not a trusted proxy: its header is ignored, the private peer is allowed.
    with client_from(data_dir, "10.9.9.9") as client:
        assert client.get(JWKS, headers=public).status_code == 200
    with client_from(data_dir, "10.9.9.9", trusted_proxies="10.9.9.9/32") as client:
        refused = client.get(JWKS, headers=public)
        assert refused.status_code == 403
        assert "203.0.113.5" in refused.json()["message"]
        assert client.get(JWKS, headers=private).status_code == 200


def test_bad_cidrs_are_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="allowed_client_cidrs"):
        EnclaveSettings(data_dir=tmp_path, instance={"allowed_client_cidrs": ["10.0.0.0/33"]})

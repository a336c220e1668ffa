"""The key shapes each provider takes, checked when a model is saved."""

from __future__ import annotations

import json

import pytest

from enclave.instance.admin_errors import InvalidInputError
from enclave.instance.registry import validate_api_token

PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
SERVICE_ACCOUNT = {
    "type": "service_account",
    "project_id": "proj-1",
    "private_key_id": "abc",
    "private_key": PEM,
    "client_email": "enclave@proj-1.iam.gserviceaccount.com",
}


def test_vertex_service_account_key_is_stored_compact() -> None:
    pretty = json.dumps(SERVICE_ACCOUNT, indent=2)
    stored = validate_api_token(pretty, "vertex_ai")
    assert stored is not None and "\n" not in stored.replace("\\n", "")
    assert json.loads(stored) == SERVICE_ACCOUNT
    assert validate_api_token("ya29.access-token", "vertex_ai") == "ya29.access-token"


@pytest.mark.parametrize(
    "key", ['{"client_email": "x"}', "{not json", json.dumps({"private_key": PEM})]
)
def test_vertex_key_that_is_no_service_account_key_is_refused(key: str) -> None:
    with pytest.raises(InvalidInputError, match="service-account key"):
        validate_api_token(key, "vertex_ai")


def test_azure_entra_token_and_bedrock_credentials() -> None:
    assert validate_api_token("Bearer eyJ0.eyJ1.sig", "azure_openai") == "Bearer eyJ0.eyJ1.sig"
    with pytest.raises(InvalidInputError, match="spaces"):
        validate_api_token("Bearer eyJ0 x", "azure_openai")
    with pytest.raises(InvalidInputError, match="spaces"):
        validate_api_token("Bearer eyJ0", "api")  # only Azure takes a bearer token
    assert validate_api_token("AKID:secret:token", "bedrock") == "AKID:secret:token"
    assert validate_api_token("ABSKbedrockapikey", "bedrock") == "ABSKbedrockapikey"
    for bad in ("AKID:", ":secret", "a:b:c:d"):
        with pytest.raises(InvalidInputError, match="ACCESS_KEY_ID:SECRET_ACCESS_KEY"):
            validate_api_token(bad, "bedrock")

"""schemathesis against both services' OpenAPI documents, on a live stack on loopback.

The real processes (instance, gateway, llama.cpp with the tiny model) run as ``enclave up``
runs them; every operation of each service's ``/openapi.json`` gets valid and invalid
requests (schemathesis' positive and negative modes) with valid credentials, so they reach
the handlers: the instance's admin PAT, the gateway's JWT signed with the instance's key for
every unit primitive. Half the gateway bodies that name a model get the real one.

Each answer must be: not a 500; within the hang bound; an error (4xx/5xx) that says why; free
of the credentials the request carried.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import httpx
import jwt
import pytest
import requests
import schemathesis
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode

from enclave.common import wire
from enclave.common.features import FEATURE_UNIT_PRIMITIVES
from enclave.model.tiny_gguf import write_tiny_gguf
from tests.e2e.conftest import Stack, running_stack
from tests.fuzz.summary import count_example, count_status

pytestmark = pytest.mark.e2e

# Cases per operation and generation mode: CI keeps the run to a few minutes on two cores.
EXAMPLES: Final = int(os.environ.get("ENCLAVE_FUZZ_API_EXAMPLES", "8"))
HANG_S: Final = 60.0  # no answer within this is a hang (the tiny model answers in < 1 s)
MESSAGE_KEYS: Final = ("detail", "message", "error", "error_description")
# Instance operations that would take the fuzzer's own credentials away (revoke or delete
# tokens, block users, rotate keys): run with a plain user's token, which must get 403.
DESTRUCTIVE_WORDS: Final = ("revoke", "block", "ban", "rotate", "deactivate", "delete", "token")
INSTANCE_ID: Final = str(uuid.uuid4())


@dataclass
class Target:
    stack: Stack
    admin_token: str
    gateway_jwt: str

    def gateway_headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.gateway_jwt}",
            wire.H_AUTH_TYPE: "oidc",
            wire.H_INSTANCE_ID: INSTANCE_ID,
            wire.H_REALM: "self-managed",
            wire.H_GLOBAL_USER_ID: "fuzz-user",
        }


def instance_jwt(stack: Stack) -> str:
    """A token as the instance mints it, for every unit primitive (signed with its key)."""
    signing = stack.data_dir / "keys" / "signing"
    kid = (signing / "active").read_text().strip()
    key = serialization.load_pem_private_key((signing / f"{kid}.pem").read_bytes(), None)
    now = int(time.time())
    scopes = sorted(
        {p for ps in FEATURE_UNIT_PRIMITIVES.values() for p in ps} | {"code_suggestions"}
    )
    claims = {
        "iss": stack.instance_url,
        "sub": INSTANCE_ID,
        "gitlab_instance_id": INSTANCE_ID,
        "aud": wire.AUDIENCE,
        "gitlab_realm": "self-managed",
        "scopes": scopes,
        "iat": now,
        "nbf": now - 5,
        "exp": now + 3 * 3600,
        "jti": str(uuid.uuid4()),
    }
    public_kid = httpx.get(f"{stack.instance_url}/oauth/discovery/keys", timeout=10).json()
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": public_kid["keys"][0]["kid"]})


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    gguf = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    with running_stack(tmp_path_factory.mktemp("fuzz-data"), gguf) as stack:
        yield Target(stack, stack.admin_token, instance_jwt(stack))


def says_why(response: requests.Response) -> bool:
    """True when an error response carries a message a person can act on."""
    text = response.text.strip()
    if not text:
        return False
    try:
        body = response.json()
    except ValueError:
        return True  # plain text (or HTML) with content
    if isinstance(body, dict):
        for key in MESSAGE_KEYS:
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if value:
                return True
    return False


def check(
    case: Case, response: requests.Response, elapsed: float, secrets: tuple[str, ...]
) -> None:
    where = f"{case.method} {case.formatted_path} -> {response.status_code}"
    assert response.status_code != 500, f"{where}: {response.text[:500]}"
    assert elapsed < HANG_S, f"{where}: took {elapsed:.0f} s"
    if response.status_code >= 400:
        assert says_why(response), f"{where}: an error without a message: {response.text[:300]!r}"
    for secret in secrets:
        assert secret not in response.text, f"{where}: the response echoes a credential"


def call(
    case: Case, base_url: str, headers: dict[str, str], secrets: tuple[str, ...], label: str
) -> None:
    started = time.monotonic()
    try:
        response = case.call(base_url=base_url, headers=headers, timeout=HANG_S)
    except requests.Timeout:
        pytest.fail(f"{case.method} {case.formatted_path}: no answer within {HANG_S} s")
    check(case, response, time.monotonic() - started, secrets)
    count_status(label, response.status_code)


def operations(document: dict[str, Any]) -> list[Any]:
    schema = schemathesis.openapi.from_dict(document)
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(operation: Any, run_case: Any, label: str) -> None:
    """Run ``run_case`` on EXAMPLES positive and EXAMPLES negative cases of ``operation``."""
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
        def run(case: Case, data: st.DataObject) -> None:
            run_case(case, data)
            count_example(label)

        try:
            run()
        except Unsatisfiable:
            # Nothing to make invalid (a GET without parameters): positive cases only.
            assert mode is GenerationMode.NEGATIVE


def test_gateway_api(target: Target) -> None:
    stack = target.stack
    document = httpx.get(f"{stack.gateway_url}/openapi.json", timeout=10).json()
    secrets = (target.gateway_jwt, stack.model_api_key, target.admin_token)

    def run_case(case: Case, data: st.DataObject) -> None:
        body = case.body
        if isinstance(body, dict) and "model_endpoint" in body and data.draw(st.booleans()):
            # Reach the model call too, not only the egress refusal.
            body.update(model_endpoint=stack.model_url, model_api_key=stack.model_api_key)
        call(case, stack.gateway_url, target.gateway_headers(), secrets, "gateway API")

    for operation in operations(document):
        fuzz(operation, run_case, "gateway API")


def instance_user_token(target: Target) -> str:
    """A plain user's PAT (admin API: create the user, then a token for it)."""
    base, headers = target.stack.instance_url, {"PRIVATE-TOKEN": target.admin_token}
    user = httpx.post(
        f"{base}/api/v4/users",
        headers=headers,
        json={"username": "fuzzer", "email": "fuzzer@example.com", "name": "Fuzzer"},
        timeout=30,
    )
    assert user.status_code in (200, 201), user.text
    pat = httpx.post(
        f"{base}/api/v4/users/{user.json()['id']}/personal_access_tokens",
        headers=headers,
        json={"name": "fuzz", "scopes": ["api"]},
        timeout=30,
    )
    assert pat.status_code in (200, 201), pat.text
    return str(pat.json()["token"])


def test_instance_api(target: Target) -> None:
    stack = target.stack
    document = httpx.get(f"{stack.instance_url}/openapi.json", timeout=10).json()
    user_token = instance_user_token(target)
    secrets = (target.admin_token, user_token, stack.model_api_key)

    for operation in operations(document):
        destructive = operation.method.upper() == "DELETE" or any(
            word in operation.path for word in DESTRUCTIVE_WORDS
        )
        token = user_token if destructive else target.admin_token

        def run_case(case: Case, data: st.DataObject, token: str = token) -> None:
            call(case, stack.instance_url, {"PRIVATE-TOKEN": token}, secrets, "instance API")

        fuzz(operation, run_case, "instance API")

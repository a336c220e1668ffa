"""Signing key rotation on a running stack: publish, activate, keep the old key until retired.

Its own stack (module scope, own data dir) so the rotation does not affect other tests. The
gateway's JWKS refresh cooldown is 1 s here so the unknown-kid refresh is not held back by the
fetch made at start-up.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.e2e.conftest import Stack, running_stack
from tests.e2e.test_gateway_tokens import call_gateway, claims

pytestmark = pytest.mark.e2e

BODY = {
    "current_file": {
        "file_name": "calc.py",
        "content_above_cursor": "def add(a, b):\n    ",
        "content_below_cursor": "\n",
    },
    "intent": "completion",
}


@pytest.fixture(scope="module")
def rotation_stack(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("enclave-rotation")
    # A 1 s key-refresh cooldown, so the gateway picks up the new key within the test.
    with running_stack(data_dir, tiny_gguf, ENCLAVE_GATEWAY__JWKS_REFRESH_COOLDOWN_S="1") as stack:
        yield stack


def enclave(stack: Stack, *args: str) -> Any:
    result = subprocess.run(
        [sys.executable, "-m", "enclave", *args, "--json"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def jwks_kids(stack: Stack) -> list[str]:
    keys = httpx.get(f"{stack.instance_url}/oauth/discovery/keys", timeout=10).json()["keys"]
    return [str(key["kid"]) for key in keys]


def complete(stack: Stack, request_id: str) -> httpx.Response:
    return httpx.post(
        f"{stack.instance_url}/api/v4/code_suggestions/completions",
        json=BODY,
        headers={"PRIVATE-TOKEN": stack.admin_token, "X-Request-ID": request_id},
        timeout=60,
    )


def signing_kid(stack: Stack, request_id: str) -> str | None:
    """The kid the instance signed with for ``request_id`` (from its request log line)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in (stack.data_dir / "logs" / "instance.log").read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == "request" and entry.get("request_id") == request_id:
                return entry.get("signing_kid")
        time.sleep(0.1)
    return None


def private_key(stack: Stack, kid: str) -> Any:
    path = stack.data_dir / "keys" / "signing" / f"{kid}.pem"
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def test_rotation_keeps_completions_working(rotation_stack: Stack, expected_answer: str) -> None:
    stack = rotation_stack
    before = f"before-{uuid.uuid4()}"
    response = complete(stack, before)
    assert response.status_code == 200, response.text
    [old_kid] = jwks_kids(stack)
    assert signing_kid(stack, before) == old_kid

    rotation = enclave(stack, "keys", "rotate", "--activate-after", "0")
    assert rotation["old_kid"] == old_kid
    new_kid = rotation["new_kid"]
    assert new_kid != old_kid
    assert rotation["old_retire_at"] >= rotation["activate_at"] + 3600

    # The running instance sees the new key within a few seconds: both are published, the
    # new one first (it signs).
    deadline = time.monotonic() + 15
    while jwks_kids(stack) != [new_kid, old_kid]:
        assert time.monotonic() < deadline, jwks_kids(stack)
        time.sleep(0.2)
    states = {row["kid"]: row["state"] for row in enclave(stack, "keys", "list")}
    assert states == {new_kid: "active", old_kid: "retiring"}

    time.sleep(1.2)  # past the gateway's refresh cooldown (1 s in this stack)
    after = f"after-{uuid.uuid4()}"
    response = complete(stack, after)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == expected_answer
    # Signed with the new key, and the gateway, which only knew the old one, accepted it.
    assert signing_kid(stack, after) == new_kid

    # Tokens the old key signed keep verifying until it is retired.
    old_token = jwt.encode(
        claims(stack),
        private_key(stack, old_kid),
        algorithm="RS256",
        headers={"kid": old_kid},
    )
    response = call_gateway(stack, old_token)
    assert response.status_code == 200, response.text

    # Nothing is retired yet, so nothing is removed.
    assert enclave(stack, "keys", "remove-retired") == {"removed": []}
    assert (stack.data_dir / "keys" / "signing" / f"{old_kid}.pem").exists()


def test_rotation_is_audited(rotation_stack: Stack) -> None:
    response = httpx.get(
        f"{rotation_stack.instance_url}/api/v4/audit_events",
        params={"event_name": "signing_key_rotated"},
        headers={"PRIVATE-TOKEN": rotation_stack.admin_token},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    [event] = response.json()
    assert event["event_name"] == "signing_key_rotated"

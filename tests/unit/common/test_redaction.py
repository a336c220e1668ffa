"""The one shared redaction filter: secrets never reach a log line, whoever logs them."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.common.logging import (
    _SECRET_VALUES,
    REDACTED,
    configure_logging,
    get_logger,
    redact,
    redact_text,
)

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwOi8vMTI3LjAuMC4xIn0.c2lnbmF0dXJlLXZhbHVl"
PAT = "enclpat-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
GLPAT = "glpat-AbCdEfGhIjKlMnOpQrStUvWxYz0"
MODEL_KEY = "enclkey-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


@pytest.mark.parametrize(
    "text",
    [
        f"token {JWT} end",
        f"Authorization: Bearer {PAT}",
        f"PRIVATE-TOKEN was {GLPAT}",
        f"bearer {MODEL_KEY}",
        f"key={MODEL_KEY}",
        "sk-abcdefghijklmnopqrstuvwxyz",
    ],
)
def test_secret_looking_values_are_removed_from_text(text: str) -> None:
    cleaned = redact_text(text)
    assert REDACTED in cleaned
    for secret in (JWT, PAT, GLPAT, MODEL_KEY, "sk-abcdefghijklmnopqrstuvwxyz"):
        assert secret not in cleaned


@pytest.mark.parametrize(
    "key", ["api_key", "model_api_key", "token", "PRIVATE-TOKEN", "Authorization", "password"]
)
def test_secret_keys_lose_their_values(key: str) -> None:
    assert redact("harmless-looking", key) == REDACTED


def test_numbers_under_secret_looking_keys_are_kept() -> None:
    assert redact(3600, "token_lifetime_s") == 3600
    assert redact(None, "api_key") is None


def test_nested_structures_are_redacted() -> None:
    value = {"headers": {"Authorization": f"Bearer {JWT}"}, "args": [f"x {PAT}"], "n": 1}
    assert redact(value) == {
        "headers": {"Authorization": REDACTED},
        "args": [f"x {REDACTED}"],
        "n": 1,
    }


def test_plain_text_is_untouched() -> None:
    assert redact_text("completion served in 12 ms for calc.py") == (
        "completion served in 12 ms for calc.py"
    )


@pytest.mark.usefixtures("restore_logging")
def test_log_lines_are_json_with_the_standard_fields_and_no_secrets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("gateway", "info", "json")
    get_logger().info("request", api_key=MODEL_KEY, detail=f"token {JWT}", status=200)
    logging.getLogger("uvicorn.error").warning("from the standard library: Bearer %s", PAT)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 2
    for line in lines:
        assert {"ts", "level", "event", "component"} <= set(line)
        assert line["component"] == "gateway"
    text = json.dumps(lines)
    for secret in (JWT, PAT, MODEL_KEY):
        assert secret not in text
    assert lines[0]["status"] == 200


# The fast path (substring checks before the regex) must redact exactly what the regex does.
_FRAGMENTS = st.sampled_from(
    ["eyJ", "eyJhbGciOiJSUzI1NiJ9.", "abcdefgh12345678", ".", " ", "Bearer ", "bEaReR  ",
     "enclpat-", "enclkey-", "encl", "glpat-", "sk-", "sk_", "-", "_", "/v2/code", "é", "K"]
)  # fmt: skip


@given(st.lists(_FRAGMENTS | st.text(max_size=12), max_size=12).map("".join))
@settings(max_examples=400, deadline=None)
def test_redaction_fast_path_agrees_with_the_regex(text: str) -> None:
    assert redact_text(text) == _SECRET_VALUES.sub(REDACTED, text)

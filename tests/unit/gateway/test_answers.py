"""The hot endpoints' JSON answer sends what Starlette's Response sends, message for message."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from starlette.types import Message

from enclave.gateway.answers import JsonAnswer
from enclave.gateway.http import json_response

pytestmark = pytest.mark.anyio

CONTENTS: tuple[Any, ...] = (
    {},
    {"id": "0" * 32, "choices": [{"text": "def f():\n    return 1", "index": 0}]},
    {"text": "héllo ✓ \u2028", "n": None, "f": 1.5, "ok": True},
    {"created": datetime.date(2026, 12, 5)},  # rendered through default=str
    [],
)


async def _sent(answer: Any) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("an answer reads nothing")

    async def send(message: Message) -> None:
        sent.append(message)

    await answer({"type": "http"}, receive, send)
    return sent


@pytest.mark.parametrize("content", CONTENTS)
async def test_json_answer_sends_what_json_response_sends(content: Any) -> None:
    answer = JsonAnswer(content)
    expected = json_response(content)
    assert await _sent(answer) == await _sent(expected)
    assert (answer.status_code, answer.body) == (expected.status_code, expected.body)

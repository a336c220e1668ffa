"""Token usage in streamed answers: the gateway asks for it and reports what the model sends."""

from __future__ import annotations

import orjson
import pytest
from gateway_fakes import Harness
from test_gateway_chat_agent import agent_body, chat_headers, delta, line

pytestmark = pytest.mark.anyio


async def test_stream_requests_usage_and_reports_it_as_the_last_line(gw: Harness) -> None:
    gw.model.chunks = ["Two", "."]
    gw.model.usage = {"prompt_tokens": 31, "completion_tokens": 2}
    async with gw.client.stream(
        "POST", "/v2/chat/agent", json=agent_body(gw.model.endpoint), headers=chat_headers(gw)
    ) as response:
        body = await response.aread()
    assert response.status_code == 200
    [call] = gw.model.requests
    assert call.json["stream_options"] == {"include_usage": True}
    lines = [item + b"\n" for item in body.split(b"\n") if item]
    assert lines == [
        delta("Two"),
        delta(".", "stop"),
        line("usage", {"usage": {"mistral-local": {"input_tokens": 31, "output_tokens": 2}}}),
    ]


async def test_non_streamed_calls_do_not_send_stream_options(gw: Harness) -> None:
    response = await gw.complete(gw.body())
    assert response.status_code == 200
    [call] = gw.model.requests
    assert "stream_options" not in call.json
    assert (
        orjson.loads(response.content)["model"]["tokens_consumption_metadata"]["output_tokens"] == 9
    )

"""Completions reach the editor cleaned: they stop where the model leaves the cursor's block."""

from __future__ import annotations

import pytest
from gateway_fakes import Harness

pytestmark = pytest.mark.anyio

ABOVE = "def add(a, b):\n    "
BELOW = "\n\nprint(add(1, 2))\n"
RUN_ON = "return a + b\n\ndef sub(a, b):\n    return a - b\n"


def body(gw: Harness, family: str, stream: bool = False) -> dict[str, object]:
    data = gw.body(stream=stream, model_name=family)
    data["current_file"] = {  # type: ignore[index]
        "file_name": "app/calc.py",
        "language_identifier": "python",
        "content_above_cursor": ABOVE,
        "content_below_cursor": BELOW,
    }
    data["model_identifier"] = f"custom_openai/{family}-local"
    return data


@pytest.mark.parametrize("family", ["codestral", "mistral"])
async def test_a_run_on_answer_stops_at_the_end_of_the_block(gw: Harness, family: str) -> None:
    gw.model.text = RUN_ON
    response = await gw.complete(body(gw, family))
    assert response.status_code == 200
    assert response.json()["choices"][0]["text"] == "return a + b\n"


@pytest.mark.parametrize("family", ["codestral", "mistral"])
async def test_a_streamed_run_on_answer_stops_at_the_end_of_the_block(
    gw: Harness, family: str
) -> None:
    gw.model.chunks = ["return a", " + b\n", "\n", "def", " sub(a, b):\n", "    return a - b\n"]
    response = await gw.complete(body(gw, family, stream=True))
    assert response.status_code == 200
    assert response.text == "return a + b\n"


async def test_chat_family_answer_loses_fences_and_the_next_function(gw: Harness) -> None:
    gw.model.text = "```python\n    return a + b\n\ndef sub(a, b):\n```\n"
    response = await gw.complete(body(gw, "mistral"))
    assert response.json()["choices"][0]["text"] == "return a + b\n"

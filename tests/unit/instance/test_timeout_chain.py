"""Finding 4: raising the AI timeout raises what follows. Every forwarded request tells the
gateway its model budget: the AI timeout (admin AI setting, else instance.gateway_timeout_s)
less the margin, read per request, so the administrator's change applies at once."""

from __future__ import annotations

import pytest

from enclave.common import timeouts
from tests.unit.instance.admin_helpers import Api
from tests.unit.instance.conftest import FakeGateway, LiveInstance
from tests.unit.instance.test_chat_gitlab18 import agent_answer

CHAT = "/api/v4/chat/completions"
SETTINGS = "/api/v4/admin/ai/settings"


@pytest.fixture()
def restore_timeout(instance: LiveInstance) -> object:
    yield None
    Api(instance).put(SETTINGS, {"ai_gateway_timeout_seconds": None})


def test_the_model_budget_follows_the_ai_timeout(
    instance: LiveInstance, fresh_gateway: FakeGateway, restore_timeout: object
) -> None:
    fresh_gateway.handler = agent_answer
    api = Api(instance)
    assert api.post(CHAT, {"content": "hi"}).status_code == 200
    # The configuration's 60 s: the model gets 55 s, so the gateway's answer comes first.
    assert fresh_gateway.requests[-1].headers[timeouts.HEADER] == "55"
    changed = api.put(SETTINGS, {"ai_gateway_timeout_seconds": 180})
    assert changed.status_code == 200, changed.text
    assert api.post(CHAT, {"content": "hi"}).status_code == 200
    assert fresh_gateway.requests[-1].headers[timeouts.HEADER] == "175"
    completion = api.post(
        "/api/v4/code_suggestions/completions",
        {
            "current_file": {
                "file_name": "a.py",
                "content_above_cursor": "def f():\n    ",
                "content_below_cursor": "",
            },
            "intent": "completion",
        },
    )
    assert completion.status_code < 500
    assert fresh_gateway.requests[-1].headers[timeouts.HEADER] == "175"

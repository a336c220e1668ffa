"""Finding 4: the instance's AI timeout reaches the gateway's model call. The instance sends
its budget (X-Enclave-Model-Timeout); the gateway uses it instead of model_timeout_s for the
instance's tokens, and never for a user's token."""

from __future__ import annotations

import pytest
from gateway_fakes import Harness
from gateway_fixtures import HarnessFactory

from enclave.common import timeouts

pytestmark = pytest.mark.anyio


def test_the_budget_is_the_ai_timeout_less_a_margin() -> None:
    assert timeouts.model_budget(60) == 55
    assert timeouts.model_budget(180) == 175
    assert timeouts.model_budget(3) == 1  # never below a second
    assert timeouts.parse_budget("175") == 175.0
    for bad in (None, "", "abc", "0", "-5", "601", "nan", "inf"):
        assert timeouts.parse_budget(bad) is None


async def test_the_instance_budget_replaces_model_timeout_s(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(model_timeout_s=0.5, model_retries=0)
    gw.model.delay_s = 1.2
    # As before: the gateway's own limit when the instance says nothing.
    slow = await gw.complete()
    assert slow.status_code in (502, 503, 504), slow.text
    assert "did not answer within 0.5 s" in slow.text
    # The instance raised its AI timeout: the model gets the time.
    raised = await gw.complete(headers={**gw.headers(), timeouts.HEADER: "5"})
    assert raised.status_code == 200, raised.text


async def test_a_user_token_cannot_choose_the_budget(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(model_timeout_s=0.5, model_retries=0)
    user_token = await gw.user_token("user-1")
    gw.model.delay_s = 1.2
    headers = {**gw.user_headers(user_token), timeouts.HEADER: "30"}
    refused = await gw.complete(gw.user_body(), headers=headers)
    assert refused.status_code >= 500, refused.text

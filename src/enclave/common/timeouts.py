"""The timeout chain, client → instance → gateway → model, derived from one setting.

The **AI timeout** *T* is the instance's "AI gateway timeout": the administrator's AI setting
``ai_gateway_timeout_seconds`` (60–600 s, live on every replica), else
``instance.gateway_timeout_s`` (60 s). Every hop after the client follows it:

* **instance → gateway**: the instance waits up to *T* for each read from the gateway;
* **gateway → model**: the instance tells the gateway its budget for this request in
  :data:`HEADER` = *T* − :data:`MARGIN_S`, and the gateway's model call (each retry included,
  each read of a stream) uses that instead of its own ``gateway.model_timeout_s``. The margin
  lets the gateway's precise "the model did not answer within … s" reach the instance before
  the instance gives up on the gateway. Raising *T* therefore raises the model's limit too,
  without touching the gateway. Only the instance's tokens may set it (at most
  :data:`MAX_BUDGET_S`); requests that reach the gateway directly (direct access, the
  OpenAI-compatible API, GitLab's own instances) use ``gateway.model_timeout_s``;
* **the model**: the embedded model's output length per feature is bounded (``max_tokens`` in
  the prompt definitions), so every feature answers well within the default *T* on 2 cores;
* **the client** (editor, ``curl``) should wait longer than *T*: then it always gets the
  instance's precise error (A1000 / 504) instead of its own timeout.
"""

from __future__ import annotations

from typing import Final

HEADER: Final = "X-Enclave-Model-Timeout"
MARGIN_S: Final = 5.0
MIN_BUDGET_S: Final = 1.0
MAX_BUDGET_S: Final = 600.0


def model_budget(ai_timeout_s: float) -> float:
    """The gateway's model-call limit for an instance that waits ``ai_timeout_s``."""
    return max(MIN_BUDGET_S, ai_timeout_s - MARGIN_S)


def parse_budget(value: str | None) -> float | None:
    """The budget an instance sent; None when absent or not a sane number of seconds."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not MIN_BUDGET_S <= seconds <= MAX_BUDGET_S:  # also refuses NaN and infinities
        return None
    return seconds

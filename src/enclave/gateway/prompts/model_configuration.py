"""The prompt registry's ``model_configuration/check``: does the model answer at all?

GitLab's instance calls it to test the connection to a self-hosted model. One short chat
message, a tiny answer: the point is the round trip, not the text.
"""

from __future__ import annotations

from typing import Final

from enclave.gateway.models.base import ChatMessage

PROMPT_ID: Final = "model_configuration/check"
MAX_TOKENS: Final = 16
TEMPERATURE: Final = 0.0

MESSAGES: Final = (
    ChatMessage("user", "This is a connection test. Reply with the single word OK."),
)

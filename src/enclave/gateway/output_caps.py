"""How long the embedded model may answer, per prompt.

The prompt definitions ask for what a real model may write (2048 tokens for chat tasks, as
GitLab's gateway does). The embedded SmolLM2-135M writes 30-60 tokens/s on two cores and
seldom stops by itself, so at that length ``explain_code`` took 55 s and ``write_tests`` hit
the 60 s timeout. For calls to the embedded model (``gateway.embedded_model_endpoint``, which
``enclave up`` sets) the output is capped per prompt below: every feature then answers within
about 15 s at 30 tokens/s, a quarter of the default AI timeout (see
:mod:`enclave.common.timeouts`). Other models keep the definitions' lengths.
"""

from __future__ import annotations

from typing import Final

EMBEDDED_MAX_TOKENS: Final[dict[str, int]] = {
    "code_suggestions/completions": 128,
    "code_suggestions/generations": 384,
    "chat/agent": 384,
    "chat/explain_code": 384,
    "chat/write_tests": 384,
    "chat/refactor_code": 384,
    "chat/fix_code": 384,
    "chat/troubleshoot_job": 384,
    "chat/explain_vulnerability": 384,
    "chat/summarize_comments": 256,
    "resolve_vulnerability": 384,
    "review_merge_request": 448,
    "summarize_review": 256,
    "summarize_new_merge_request": 256,
    "generate_commit_message": 128,
    "glab_ask_git_command": 128,
    "categorize_question": 64,
}
DEFAULT_EMBEDDED_MAX_TOKENS: Final = 384

_embedded_endpoint: str | None = None


def install(embedded_endpoint: str | None) -> None:
    """Set at gateway start-up from ``gateway.embedded_model_endpoint``."""
    global _embedded_endpoint
    _embedded_endpoint = embedded_endpoint.rstrip("/") if embedded_endpoint else None


def capped(endpoint: str, prompt_id: str | None, max_tokens: int) -> int:
    """``max_tokens`` for a call to ``endpoint``, capped when that is the embedded model."""
    if _embedded_endpoint is None or endpoint.rstrip("/") != _embedded_endpoint:
        return max_tokens
    cap = EMBEDDED_MAX_TOKENS.get(prompt_id or "", DEFAULT_EMBEDDED_MAX_TOKENS)
    return min(max_tokens, cap)

"""System prompts of GitLab's legacy chat invokables (``/v1/chat/{invokable}``), Enclave's own.

Each invokable has a unit primitive (the token scope that grants it) and a short instruction
put before the conversation as the system message, unless the caller sent its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from enclave.common import wire

MAX_TOKENS: Final = 2048
TEMPERATURE: Final = 0.1
MAX_MAX_TOKENS: Final = 8192

_BASE: Final = (
    "You are a helpful assistant for software developers working in GitLab. Answer "
    "accurately and concisely, use Markdown, and put code in fenced code blocks."
)


@dataclass(frozen=True, slots=True)
class Invokable:
    name: str
    scopes: tuple[str, ...]  # any of these unit primitives grants access
    system: str


def _chat_feature(name: str, task: str) -> Invokable:
    # Chat sub-features: the instance mints duo_chat together with the sub-feature's scope.
    return Invokable(name, (name, wire.UP_DUO_CHAT), f"{_BASE} {task}")


INVOKABLES: Final[dict[str, Invokable]] = {
    item.name: item
    for item in (
        Invokable("agent", (wire.UP_DUO_CHAT,), _BASE),
        _chat_feature(
            "explain_code",
            "Explain what the given code does and how, step by step, pointing out anything "
            "surprising or risky.",
        ),
        _chat_feature(
            "write_tests",
            "Write thorough unit tests for the given code with the test framework its language "
            "usually uses, covering normal cases, edge cases and errors.",
        ),
        _chat_feature(
            "refactor_code",
            "Refactor the given code to be clearer and easier to maintain without changing "
            "its behaviour, and explain the changes briefly.",
        ),
        _chat_feature(
            "fix_code",
            "Find the bugs in the given code, show the corrected code, and say what was wrong.",
        ),
        _chat_feature(
            "troubleshoot_job",
            "Read the failed CI/CD job log, find the root cause of the failure and suggest a "
            "concrete fix.",
        ),
        Invokable(
            "explain_vulnerability",
            ("explain_vulnerability",),
            f"{_BASE} Explain the given security vulnerability: what it is, how it could be "
            "exploited in this code, and how to fix it.",
        ),
        Invokable(
            "summarize_comments",
            ("summarize_comments",),
            f"{_BASE} Summarize the given discussion comments: the main points, decisions and "
            "open questions.",
        ),
    )
}

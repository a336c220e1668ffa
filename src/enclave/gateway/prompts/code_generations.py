"""Prompts for code generations: the instance's prompt verbatim, or Enclave's own instruction.

GitLab's instance builds the generation prompt itself and sends it as ``prompt`` (version 2);
the gateway passes it to the model verbatim as one user message with the parameters GitLab's
gateway uses (``max_tokens`` 2048, ``stop ["</new_code>"]``, ``temperature`` 0.2,
``top_p`` 0.95). Without a prompt the gateway writes one from the file around the cursor.
"""

from __future__ import annotations

from typing import Final

from enclave.gateway.prompts.code_completions import CURSOR, FenceStripper, strip_fences

MAX_TOKENS: Final = 2048
STOP: Final = ("</new_code>",)
TEMPERATURE: Final = 0.2
TOP_P: Final = 0.95
MAX_PREFIX_CHARS: Final = 16000
MAX_SUFFIX_CHARS: Final = 8000

_OPEN_TAG: Final = "<new_code>"
_CLOSE_TAG: Final = "</new_code>"


def generation_instruction(prefix: str, suffix: str, file_name: str, language: str | None) -> str:
    """One user message asking for new code at the cursor, wrapped in ``<new_code>`` tags."""
    prefix = prefix[-MAX_PREFIX_CHARS:]
    suffix = suffix[:MAX_SUFFIX_CHARS]
    what = f"{language} file" if language else "file"
    return (
        f"You are editing the {what} `{file_name}`. Write the new code that belongs at "
        f"{CURSOR}, doing what the comment or instruction just before the cursor asks. "
        "Match the surrounding style and indentation, and do not repeat code that is already "
        f"there. Put only the new code between {_OPEN_TAG} and {_CLOSE_TAG}.\n\n"
        f"<file>\n{prefix}{CURSOR}{suffix}\n</file>"
    )


def postprocess_generation(text: str) -> str:
    """Unwrap the answer: drop ``<new_code>`` tags and a markdown fence around the code."""
    body = text
    stripped = body.lstrip()
    if stripped and _OPEN_TAG.startswith(stripped):
        return ""  # cut off inside the opening tag
    if stripped.startswith(_OPEN_TAG):
        body = stripped[len(_OPEN_TAG) :]
        if body.startswith("\n"):
            body = body[1:]
    closer = body.find(_CLOSE_TAG)
    if closer >= 0:
        body = body[:closer]
    return strip_fences(body)


class GenerationStreamFilter:
    """Incremental :func:`postprocess_generation` for streamed answers."""

    def __init__(self) -> None:
        self._head = ""
        self._started = False
        self._fences = FenceStripper()

    def _after_tag(self, final: bool) -> str | None:
        """The text after a leading ``<new_code>`` (or all of it); None while undecided."""
        stripped = self._head.lstrip()
        if stripped.startswith(_OPEN_TAG):
            rest = stripped[len(_OPEN_TAG) :]
            if not rest and not final:
                return None  # the newline after the tag may still come
            return rest[1:] if rest.startswith("\n") else rest
        if not final and (not stripped or _OPEN_TAG.startswith(stripped)):
            return None
        if final and stripped and _OPEN_TAG.startswith(stripped):
            return ""
        return self._head

    def feed(self, delta: str) -> str:
        if self._started:
            return self._fences.feed(delta)
        self._head += delta
        rest = self._after_tag(final=False)
        if rest is None:
            return ""
        self._started = True
        return self._fences.feed(rest)

    def flush(self) -> str:
        if self._started:
            return self._fences.flush()
        rest = self._after_tag(final=True) or ""
        self._started = True
        return self._fences.feed(rest) + self._fences.flush()

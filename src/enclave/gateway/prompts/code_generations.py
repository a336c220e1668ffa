"""Prompts for code generations: the instance's prompt verbatim, or Enclave's own instruction.

GitLab's instance builds the generation prompt itself and sends it as ``prompt`` (version 2);
the gateway passes it to the model verbatim as one user message with the parameters GitLab's
gateway uses (``max_tokens`` 2048, ``stop ["</new_code>"]``, ``temperature`` 0.2,
``top_p`` 0.95). Without a prompt the gateway writes one from the file around the cursor.
"""

from __future__ import annotations

from typing import Final

from enclave.gateway.prompts.code_completions import CURSOR
from enclave.gateway.prompts.postprocess import NEW_CODE_CLOSE as _CLOSE_TAG
from enclave.gateway.prompts.postprocess import NEW_CODE_OPEN as _OPEN_TAG

MAX_TOKENS: Final = 2048
STOP: Final = ("</new_code>",)
TEMPERATURE: Final = 0.2
TOP_P: Final = 0.95
MAX_PREFIX_CHARS: Final = 16000
MAX_SUFFIX_CHARS: Final = 8000


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

"""Prompts for code completions, per model family, in one data-driven table.

A family either has a fill-in-the-middle (FIM) layout — the model vendors' documented special
tokens, sent as a raw prompt to ``/v1/completions`` — or is *chat style*: the gateway writes an
instruction asking for the missing code and sends it as one user message to
``/v1/chat/completions``. Chat answers are post-processed lightly (markdown fences and an
echoed prefix are removed), since instruction-tuned models like to repeat and decorate.

The instruction texts here are Enclave's own.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Final

from enclave.gateway.models.base import Api

# Model families the instance sends as ``model_name`` (GitLab's self-hosted model families).
FAMILY_GENERAL: Final = "general"


@dataclass(frozen=True, slots=True)
class FamilySpec:
    """How one model family is prompted for code completion."""

    name: str
    api: Api
    # Raw FIM layout with ``{prefix}`` and ``{suffix}``; only for ``api == "completions"``.
    fim_template: str | None = None
    stop: tuple[str, ...] = ()
    temperature: float = 0.2
    max_tokens: int = 128
    # Context sent around the cursor; the instance already trims, direct callers may not.
    max_prefix_chars: int = 8000
    max_suffix_chars: int = 4000
    top_p: float | None = None


_QWEN_STOP = (
    "<|endoftext|>",
    "<|fim_prefix|>",
    "<|fim_suffix|>",
    "<|fim_middle|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<|im_end|>",
)

FAMILIES: Final[dict[str, FamilySpec]] = {
    spec.name: spec
    for spec in (
        # Fill-in-the-middle families (raw prompt, /v1/completions).
        FamilySpec(
            "codestral",
            "completions",
            "<s>[SUFFIX]{suffix}[PREFIX]{prefix}",
            stop=("</s>", "[SUFFIX]", "[PREFIX]"),
        ),
        FamilySpec(
            "codellama",
            "completions",
            # Meta's infilling layout: a space after <PRE> and before <MID>, none after <SUF>.
            "<PRE> {prefix} <SUF>{suffix} <MID>",
            stop=("<EOT>", "<PRE>", "<SUF>", "<MID>"),
        ),
        FamilySpec(
            "codegemma",
            "completions",
            "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
            stop=(
                "<|file_separator|>",
                "<|fim_prefix|>",
                "<|fim_suffix|>",
                "<|fim_middle|>",
                "<end_of_turn>",
            ),
        ),
        FamilySpec(
            "deepseekcoder",
            "completions",
            "<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>",
            stop=(
                "<｜end▁of▁sentence｜>",
                "<｜fim▁begin｜>",
                "<｜fim▁hole｜>",
                "<｜fim▁end｜>",
                "<|EOT|>",
            ),
            temperature=0.0,
        ),
        FamilySpec(
            "qwen",
            "completions",
            "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
            stop=_QWEN_STOP,
        ),
        # Chat-style families (instruction, /v1/chat/completions). GitLab refuses mixtral and
        # llama3 for completions; they follow the instruction as well as the others, so we
        # serve them the same way.
        FamilySpec("mistral", "chat"),
        FamilySpec("mixtral", "chat"),
        FamilySpec("llama3", "chat"),
        FamilySpec("gpt", "chat"),
        FamilySpec("claude_3", "chat"),
        FamilySpec("gemini", "chat"),
        FamilySpec(FAMILY_GENERAL, "chat"),
    )
}


class UnsupportedFamily(ValueError):
    """The request names a model family the gateway has no prompt for."""

    def __init__(self, family: str, use_case: str) -> None:
        self.family = family
        super().__init__(
            f"model {family} is not supported by use case {use_case} and provider litellm; "
            f"supported model families: {', '.join(sorted(FAMILIES))}"
        )


def family_spec(model_name: str | None, use_case: str = "code completions") -> FamilySpec:
    """The spec for ``model_name`` (case-insensitive); no name means the general family."""
    name = (model_name or FAMILY_GENERAL).strip().lower()
    spec = FAMILIES.get(name)
    if spec is None:
        raise UnsupportedFamily(model_name or "", use_case)
    return spec


# -- language -------------------------------------------------------------------------------

_EXTENSIONS: Final[dict[str, str]] = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".scala": "scala",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".cs": "csharp",
    ".rb": "ruby",
    ".php": "php",
    ".swift": "swift",
    ".sh": "shell",
    ".bash": "shell",
    ".sql": "sql",
    ".html": "html",
    ".css": "css",
    ".scss": "scss",
    ".vue": "vue",
    ".svelte": "svelte",
    ".lua": "lua",
    ".r": "r",
    ".dart": "dart",
    ".ex": "elixir",
    ".exs": "elixir",
    ".erl": "erlang",
    ".hs": "haskell",
    ".clj": "clojure",
    ".tf": "terraform",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".toml": "toml",
    ".md": "markdown",
}


def detect_language(language_identifier: str | None, file_name: str) -> str | None:
    """The language reported as ``model.lang``: the editor's identifier, else the extension."""
    if language_identifier and language_identifier.strip():
        return language_identifier.strip().lower()
    return _EXTENSIONS.get(posixpath.splitext(file_name)[1].lower())


# -- prompt building ------------------------------------------------------------------------


def trim_context(prefix: str, suffix: str, spec: FamilySpec) -> tuple[str, str]:
    """Keep the text nearest the cursor, cutting at line boundaries where possible."""
    if len(prefix) > spec.max_prefix_chars:
        prefix = prefix[-spec.max_prefix_chars :]
        newline = prefix.find("\n")
        if 0 <= newline < len(prefix) - 1:
            prefix = prefix[newline + 1 :]
    if len(suffix) > spec.max_suffix_chars:
        suffix = suffix[: spec.max_suffix_chars]
        newline = suffix.rfind("\n")
        if newline > 0:
            suffix = suffix[: newline + 1]
    return prefix, suffix


_PLACEHOLDER: Final = re.compile(r"\{(prefix|suffix)\}")


def fim_prompt(spec: FamilySpec, prefix: str, suffix: str) -> str:
    """The raw FIM prompt, filled in one pass (code is full of braces, even "{suffix}")."""
    assert spec.fim_template is not None
    values = {"prefix": prefix, "suffix": suffix}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], spec.fim_template)


CURSOR: Final = "<CURSOR>"


def chat_completion_instruction(
    prefix: str, suffix: str, file_name: str, language: str | None
) -> str:
    """One user message asking a chat model for exactly the code that belongs at the cursor."""
    what = f"{language} file" if language else "file"
    return (
        f"Fill in the missing code at {CURSOR} in the {what} `{file_name}`.\n"
        f"Reply with only the code to insert at {CURSOR}: no explanation, no markdown fences, "
        "and do not repeat the code before or after the cursor. If nothing is missing, reply "
        "with nothing.\n\n"
        f"<file>\n{prefix}{CURSOR}{suffix}\n</file>"
    )

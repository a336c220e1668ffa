"""Code Suggestions: the client request, completion-vs-generation, and the gateway body.

The request is what GitLab's IDE extensions and language server send to
``POST /api/v4/code_suggestions/completions``; the forwarded body is what a GitLab instance
sends to its AI gateway for a self-hosted model (``shared/reference/gitlab-instance.md`` §3.1,
``gitlab-ai-gateway-observed.md``): the client's file context plus ``model_provider: litellm``,
``prompt_version: 2`` and the model's family, endpoint, identifier and API key. Everything here
is pure (no I/O) so it is cheap to test exhaustively.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from enclave.instance.features import Feature, ResolvedModel

MAX_FILE_NAME_CHARS = 255
MAX_CONTENT_CHARS = 100_000
MAX_CONTEXT_ITEMS = 100
MAX_INSTRUCTION_CHARS = 10_000
# GitLab trims each side to this before forwarding to a self-hosted model.
FORWARD_CONTENT_CHARS = 100_000
# The generation prompt is a pre-built string the gateway sends as is, so it must fit small
# self-hosted context windows: keep the code nearest the cursor.
GENERATION_PROMPT_ABOVE_CHARS = 8_000
GENERATION_PROMPT_BELOW_CHARS = 2_000
# How many comment lines above the cursor make up an instruction.
MAX_INSTRUCTION_LINES = 20

GENERATIONS_PROMPT_ID = "code_suggestions/generations"
MODEL_PROVIDER_LITELLM = "litellm"

Intent = Literal["completion", "generation"]


class CurrentFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    file_name: str = Field(min_length=1, max_length=MAX_FILE_NAME_CHARS)
    language_identifier: str | None = Field(None, max_length=255)
    content_above_cursor: str = Field(max_length=MAX_CONTENT_CHARS)
    content_below_cursor: str | None = Field("", max_length=MAX_CONTENT_CHARS)


class ContextItem(BaseModel):
    """Extra code context the client attaches (open tabs, imported files, snippets)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=255)
    name: str = Field(max_length=MAX_FILE_NAME_CHARS)
    content: str = Field(max_length=MAX_CONTENT_CHARS)


class CompletionRequest(BaseModel):
    """``POST /api/v4/code_suggestions/completions`` body; unknown fields are ignored (Grape)."""

    model_config = ConfigDict(extra="ignore")

    current_file: CurrentFile
    intent: Intent | None = None
    stream: bool = False
    project_path: str | None = Field(None, max_length=2048)
    project_id: int | None = None
    generation_type: str | None = Field(None, max_length=255)
    user_instruction: str | None = Field(None, max_length=MAX_INSTRUCTION_CHARS)
    context: list[ContextItem] | None = Field(None, max_length=MAX_CONTEXT_ITEMS)

    @property
    def above(self) -> str:
        return self.current_file.content_above_cursor

    @property
    def below(self) -> str:
        return self.current_file.content_below_cursor or ""


def describe_validation_error(error: ValidationError) -> str:
    """One line naming the first bad field, in GitLab's ``field is missing`` style."""
    first = error.errors(include_url=False)[0]
    location = ".".join(str(part) for part in first["loc"]) or "body"
    if first["type"] == "missing":
        return f"{location} is missing"
    return f"{location} is invalid: {first['msg']}"


# --- completion or generation ---------------------------------------------------------------

_HASH = ("#",)
_SLASH = ("//", "/*", "* ")  # "* " continues a block comment; "*p = 1" is code
_DASH = ("--",)
_SEMI = (";",)
_PERCENT = ("%",)
_MARKUP = ("<!--",)
_LANGUAGE_COMMENTS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        (
            "py",
            "rb",
            "sh",
            "bash",
            "zsh",
            "pl",
            "r",
            "yaml",
            "yml",
            "toml",
            "ex",
            "exs",
            "jl",
            "ps1",
            "tf",
            "nim",
            "cr",
            "coffee",
            "dockerfile",
            "makefile",
            "mk",
            "cmake",
        ),
        _HASH,
    ),
    **dict.fromkeys(
        (
            "c",
            "h",
            "cc",
            "cpp",
            "cxx",
            "hpp",
            "cs",
            "java",
            "js",
            "jsx",
            "mjs",
            "cjs",
            "ts",
            "tsx",
            "go",
            "rs",
            "swift",
            "kt",
            "kts",
            "scala",
            "dart",
            "groovy",
            "proto",
            "sol",
            "zig",
            "v",
            "css",
            "scss",
            "less",
        ),
        _SLASH,
    ),
    "php": _SLASH + _HASH,
    **dict.fromkeys(("sql", "hs", "lua", "elm", "ada", "vhdl"), _DASH),
    **dict.fromkeys(("lisp", "clj", "cljs", "el", "scm", "asm", "s"), _SEMI),
    **dict.fromkeys(("erl", "hrl", "tex"), _PERCENT),
    **dict.fromkeys(("html", "htm", "xml", "vue", "svelte", "md"), _MARKUP + _SLASH),
}
_ANY_COMMENT = ("#", "//", "/*", "--", ";", "<!--")
_COMMENT_ENDINGS = ("*/", "-->")


def _comment_markers(file_name: str) -> tuple[str, ...]:
    path = PurePosixPath(file_name)
    key = path.suffix.lstrip(".").lower() or path.name.lower()
    return _LANGUAGE_COMMENTS.get(key, _ANY_COMMENT)


def _comment_text(line: str, markers: tuple[str, ...]) -> str | None:
    """The text of ``line`` if it is a comment, else None."""
    stripped = line.strip()
    if stripped in ("*", "*/") and "* " in markers:
        return ""
    for marker in sorted(markers, key=len, reverse=True):
        if stripped.startswith(marker):
            text = stripped[len(marker) :]
            for ending in _COMMENT_ENDINGS:
                text = text.removesuffix(ending)
            return text.strip()
    return None


def _comment_block_above_cursor(request: CompletionRequest) -> list[str] | None:
    """The comment lines right above an empty cursor line, or None if there are none."""
    lines = request.above.split("\n")
    if len(lines) < 2 or lines[-1].strip():
        return None  # the cursor is inside code on its line: the user is typing code
    markers = _comment_markers(request.current_file.file_name)
    block: list[str] = []
    for line in reversed(lines[:-1]):
        text = _comment_text(line, markers)
        if text is None or len(block) >= MAX_INSTRUCTION_LINES:
            break
        block.append(text)
    if not block:
        return None
    return [text for text in reversed(block) if text]


def detect_intent(request: CompletionRequest) -> Intent:
    """The client's intent, or GitLab's rule when it sends none.

    Generation when the user wrote an instruction: an explicit ``user_instruction``, or a
    comment on the line above an empty cursor line with (almost) nothing below; otherwise
    completion.
    """
    if request.intent is not None:
        return request.intent
    if request.user_instruction and request.user_instruction.strip():
        return "generation"
    if request.below.strip():
        return "completion"
    return "generation" if _comment_block_above_cursor(request) is not None else "completion"


def feature_for(intent: Intent) -> Feature:
    return Feature.CODE_GENERATIONS if intent == "generation" else Feature.CODE_COMPLETIONS


def gateway_path(intent: Intent) -> str:
    return "/v2/code/generations" if intent == "generation" else "/v2/code/completions"


# --- the forwarded body ---------------------------------------------------------------------


def _trimmed_current_file(request: CompletionRequest) -> dict[str, Any]:
    current: dict[str, Any] = {"file_name": request.current_file.file_name}
    if request.current_file.language_identifier:
        current["language_identifier"] = request.current_file.language_identifier
    current["content_above_cursor"] = request.above[-FORWARD_CONTENT_CHARS:]
    current["content_below_cursor"] = request.below[:FORWARD_CONTENT_CHARS]
    return current


def instruction_for(request: CompletionRequest) -> str:
    """What the user asked for: their explicit instruction, else the comment above the cursor."""
    parts: list[str] = []
    block = _comment_block_above_cursor(request)
    if block:
        parts.append("\n".join(block))
    if request.user_instruction and request.user_instruction.strip():
        parts.append(request.user_instruction.strip())
    if not parts:
        parts.append("Write the code that belongs at the cursor.")
    return "\n".join(parts)


def generation_prompt(request: CompletionRequest) -> str:
    """The instruction-style prompt a self-hosted model gets for code generation.

    The gateway sends it as one user message and stops at ``</new_code>``.
    """
    current = request.current_file
    language = f" ({current.language_identifier})" if current.language_identifier else ""
    above = request.above[-GENERATION_PROMPT_ABOVE_CHARS:]
    below = request.below[:GENERATION_PROMPT_BELOW_CHARS]
    return (
        f"You are a coding assistant. Write new code for the file {current.file_name}{language}, "
        "to be inserted at the cursor, following the instruction below. Match the style of the "
        "surrounding code and do not repeat code that is already there.\n\n"
        f"<code_before_cursor>\n{above}\n</code_before_cursor>\n"
        f"<code_after_cursor>\n{below}\n</code_after_cursor>\n\n"
        f"<instruction>\n{instruction_for(request)}\n</instruction>\n\n"
        "Reply with the new code only, between <new_code> and </new_code>, without explanations."
    )


def gateway_body(
    request: CompletionRequest, intent: Intent, model: ResolvedModel
) -> dict[str, Any]:
    """The JSON body for ``<gateway>/v2/code/completions`` or ``/v2/code/generations``."""
    body: dict[str, Any] = {}
    if request.project_path is not None:
        body["project_path"] = request.project_path
    if request.project_id is not None:
        body["project_id"] = request.project_id
    body.update(
        {
            "current_file": _trimmed_current_file(request),
            "stream": request.stream,
            "choices_count": 0,
            "context": [item.model_dump() for item in request.context or []],
            "telemetry": [],
            "prompt_version": 2,
        }
    )
    if intent == "generation":
        body["prompt"] = generation_prompt(request)
        body["prompt_id"] = GENERATIONS_PROMPT_ID
    else:
        body["prompt"] = ""  # the gateway renders the completion prompt for the model family
    if model.vendored:
        return body  # no model: the vendored gateway chooses it (as GitLab sends it)
    body["model_provider"] = MODEL_PROVIDER_LITELLM
    body["model_name"] = model.family
    if model.endpoint:
        body["model_endpoint"] = model.endpoint
    if model.api_key:
        body["model_api_key"] = model.api_key
    if model.identifier:
        body["model_identifier"] = model.identifier
    return body

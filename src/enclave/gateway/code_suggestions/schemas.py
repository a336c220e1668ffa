"""GitLab's code-suggestion request body (``/v2/code/*``; ``/v4/code/suggestions`` maps to it).

The body is described twice, field for field:

* the pydantic models (:class:`SuggestionsRequest`) are its schema: the OpenAPI document and
  the 422 answers, in FastAPI's words, come from them;
* the msgspec structs (:class:`SuggestionsBody`) are what the pipeline plans from.

:func:`decode_suggestions` decodes a body with msgspec, about five times cheaper than
pydantic on the hot path. msgspec is the stricter of the two (no lax conversions such as
``"stream": 1``), so a body it refuses goes to pydantic, whose verdict is final: its 422, or
the body it accepted, converted. A body with telemetry goes to pydantic too: telemetry is
free-form JSON, where pydantic refuses some things msgspec takes (nesting past its limit).
So every body gets the answer pydantic alone would give
(``tests/unit/gateway/test_suggestions_body.py`` holds the two descriptions to each other).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from pydantic import Field, StringConstraints

from enclave.gateway.api.schemas import BodyModel, FileContent, PromptMessage, Str255


class CurrentFile(BodyModel):
    file_name: Str255
    language_identifier: Str255 | None = None
    content_above_cursor: FileContent
    content_below_cursor: FileContent = ""


class CodeContextPayload(BodyModel):
    type: Str255 = "file"
    name: Str255 = ""
    content: FileContent = ""


class SuggestionsRequest(BodyModel):
    """What a GitLab instance sends for code completions and generations."""

    current_file: CurrentFile
    project_path: Annotated[str, StringConstraints(max_length=4096)] | None = None
    project_id: int | None = None
    stream: bool = False
    choices_count: Annotated[int, Field(ge=0)] = 0  # accepted; one choice is returned
    # A factory, not ``= []``: pydantic deep-copies a mutable default on every request (2 µs
    # of the body's 5); the schema still says the default is [].
    context: Annotated[list[CodeContextPayload], Field(max_length=100)] = Field(
        default_factory=list, json_schema_extra={"default": []}
    )
    telemetry: Annotated[list[dict[str, Any]], Field(max_length=10)] = Field(
        default_factory=list, json_schema_extra={"default": []}
    )
    prompt_version: Literal[1, 2, 3] = 1
    prompt: str | list[PromptMessage] | None = None
    prompt_id: Str255 | None = None
    model_provider: Str255 | None = None
    model_name: Annotated[str, StringConstraints(max_length=50)] | None = None
    model_endpoint: Annotated[str, StringConstraints(max_length=2048)] | None = None
    model_api_key: Annotated[str, StringConstraints(max_length=4096)] | None = None
    model_identifier: Str255 | None = None


# -- the structs the pipeline plans from --------------------------------------------------

_Text255 = Annotated[str, msgspec.Meta(max_length=255)]
_FileText = Annotated[str, msgspec.Meta(max_length=100_000)]


class Message(msgspec.Struct, frozen=True):
    """:class:`~enclave.gateway.api.schemas.PromptMessage`."""

    role: Literal["system", "user", "assistant"]
    content: Annotated[str, msgspec.Meta(max_length=200_000)]


class FileAtCursor(msgspec.Struct, frozen=True):
    """:class:`CurrentFile`."""

    file_name: _Text255
    content_above_cursor: _FileText
    language_identifier: _Text255 | None = None
    content_below_cursor: _FileText = ""


class ContextItem(msgspec.Struct, frozen=True):
    """:class:`CodeContextPayload`."""

    type: _Text255 = "file"
    name: _Text255 = ""
    content: _FileText = ""


class SuggestionsBody(msgspec.Struct, frozen=True):
    """:class:`SuggestionsRequest`, as the pipeline reads it."""

    current_file: FileAtCursor
    project_path: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    project_id: int | None = None
    stream: bool = False
    choices_count: Annotated[int, msgspec.Meta(ge=0)] = 0
    context: Annotated[list[ContextItem], msgspec.Meta(max_length=100)] = []
    telemetry: Annotated[list[dict[str, Any]], msgspec.Meta(max_length=10)] = []
    prompt_version: Literal[1, 2, 3] = 1
    prompt: str | list[Message] | None = None
    prompt_id: _Text255 | None = None
    model_provider: _Text255 | None = None
    model_name: Annotated[str, msgspec.Meta(max_length=50)] | None = None
    model_endpoint: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    model_api_key: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    model_identifier: _Text255 | None = None


_decode = msgspec.json.Decoder(SuggestionsBody).decode


def decode_suggestions(body: bytes) -> SuggestionsBody:
    """The body as :class:`SuggestionsBody`; :class:`pydantic.ValidationError` exactly when
    ``SuggestionsRequest.model_validate_json(body)`` raises it."""
    try:
        decoded = _decode(body)
    except (msgspec.MsgspecError, RecursionError):
        decoded = None  # refused, or too deep to say: pydantic decides
    if decoded is not None and not decoded.telemetry:
        return decoded
    return as_body(SuggestionsRequest.model_validate_json(body))


def as_body(request: SuggestionsRequest) -> SuggestionsBody:
    """A validated request as the pipeline's struct (its values already hold, so this only
    copies them; msgspec checks them once more on the way)."""
    return msgspec.convert(request.model_dump(), SuggestionsBody)

"""GitLab's code-suggestion request body (``/v2/code/*``; ``/v4/code/suggestions`` maps to it)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

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

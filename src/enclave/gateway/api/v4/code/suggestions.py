"""``POST /v4/code/suggestions``: v3's ``prompt_components`` body, streamed as real SSE.

The body carries one ``code_editor_completion`` or ``code_editor_generation`` component (the
file around the cursor and the model) and optional ``code_editor_context`` items. It is mapped
onto the v2 request and planned by the v2 use cases (:data:`COMPLETIONS`, :data:`GENERATIONS`),
so prompts, model targets and post-processing are the same as there. Pipeline: authenticate
(401/503/429) → any code-suggestions scope (403) → body (413/422) → the component's scope
(403) → model target (the administrator's for a user's token: 403/503) → plan (422) →
endpoint (403) → model (503/429; one generic message for a user).

Streamed answers are framed as GitLab's v4 events (header ``X-Streaming-Format: sse``)::

    event: stream_start\\ndata: {"metadata": {"model": {...}, "timestamp": ..., ...}}\\n\\n
    event: content_chunk\\ndata: {"choices": [{"delta": {"content": "..."}, "index": 0}]}\\n\\n
    event: stream_end\\ndata: null\\n\\n

A model failure mid-answer ends the response without ``stream_end`` (the client sees an
incomplete stream), as in the v2 raw-text streams.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec
import orjson
from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from enclave.common import wire
from enclave.common.logging import get_logger
from enclave.gateway.api.schemas import BodyModel, field_error
from enclave.gateway.api.steps import authenticate, model_failure, parse_body
from enclave.gateway.code_suggestions.completions import COMPLETIONS
from enclave.gateway.code_suggestions.completions import PROMPT_ID as COMPLETIONS_PROMPT_ID
from enclave.gateway.code_suggestions.generations import GENERATIONS
from enclave.gateway.code_suggestions.generations import PROMPT_ID as GENERATIONS_PROMPT_ID
from enclave.gateway.code_suggestions.pipeline import (
    ENGINE,
    Plan,
    UseCase,
    check_prompt_shape,
    target_for,
    with_vendor,
)
from enclave.gateway.code_suggestions.schemas import (
    CodeContextPayload,
    FileContent,
    PromptMessage,
    Str255,
    SuggestionsBody,
)
from enclave.gateway.http import detail, json_response
from enclave.gateway.models.base import EndpointNotAllowed, ModelError, TextStream
from enclave.gateway.prompts.registry import NoMatchingVersion, PromptNotFound, get_registry
from enclave.gateway.prompts.semver import InvalidVersion
from enclave.gateway.streaming import RawTextStreamResponse, TextFilter
from enclave.gateway.targets import OPENAI_COMPATIBLE, PROVIDER_LITELLM, ModelMetadata, PlanError
from enclave.gateway.user_access import model_unavailable_message

if TYPE_CHECKING:
    from enclave.gateway.runtime import Gateway

log = get_logger(__name__)

COMPLETION: Final = "code_editor_completion"
GENERATION: Final = "code_editor_generation"
CONTEXT: Final = "code_editor_context"
STREAMING_FORMAT_HEADER: Final = "X-Streaming-Format"

_USE_CASES: Final[dict[str, UseCase]] = {COMPLETION: COMPLETIONS, GENERATION: GENERATIONS}
_PROMPT_IDS: Final[dict[str, str]] = {
    COMPLETION: COMPLETIONS_PROMPT_ID,
    GENERATION: GENERATIONS_PROMPT_ID,
}
# Any of these lets the caller past the first check; the component's own scopes come later.
_ANY_SCOPE: Final = (wire.UP_COMPLETE_CODE, wire.UP_GENERATE_CODE, wire.UP_CODE_SUGGESTIONS)


class ComponentMetadata(BodyModel):
    source: Str255
    version: Str255


class EditorPayload(BodyModel):
    """The file around the cursor, the model, and v2's prompt fields."""

    file_name: Str255
    content_above_cursor: FileContent
    content_below_cursor: FileContent = ""
    language_identifier: Str255 | None = None
    model_provider: Str255 | None = None
    model_name: Annotated[str, Field(max_length=50)] | None = None
    model_endpoint: Annotated[str, Field(max_length=2048)] | None = None
    model_api_key: Annotated[str, Field(max_length=4096)] | None = None
    model_identifier: Str255 | None = None
    stream: bool = False
    prompt: str | list[PromptMessage] | None = None
    prompt_id: Str255 | None = None
    # GitLab 17: v2's integer discriminator; GitLab 18 (generations): the semver constraint of
    # the registry prompt ("^2.0.0", "2.0.3").
    prompt_version: Literal[1, 2, 3] | Str255 = 1


class EditorComponent(BodyModel):
    type: Literal["code_editor_completion", "code_editor_generation"]
    payload: EditorPayload
    metadata: ComponentMetadata | None = None


class ContextComponent(BodyModel):
    type: Literal["code_editor_context"]
    payload: CodeContextPayload
    metadata: ComponentMetadata | None = None


Component = Annotated[EditorComponent | ContextComponent, Field(discriminator="type")]


class V4SuggestionsRequest(BodyModel):
    # One editor component plus at most 100 context items (v2's context limit).
    prompt_components: Annotated[list[Component], Field(min_length=1, max_length=101)]
    # GitLab 18 names the model here rather than in the payload (the payload's fields win).
    model_metadata: ModelMetadata | None = None


def v2_prompt_version(payload: EditorPayload) -> Literal[1, 2, 3]:
    """v2's integer for a payload; a semver string means "the registry's prompt", whose
    shape is told by ``prompt`` (none: built here, a string: verbatim, a list: messages)."""
    if not isinstance(payload.prompt_version, str):
        return payload.prompt_version
    if isinstance(payload.prompt, list):
        return 3
    return 2 if payload.prompt else 1


def check_prompt_constraint(
    body: V4SuggestionsRequest, editor: EditorComponent, family: str | None
) -> None:
    """A semver ``prompt_version`` must name a version of the registry prompt (422)."""
    constraint = editor.payload.prompt_version
    if not isinstance(constraint, str):
        return
    prompt_id = editor.payload.prompt_id or _PROMPT_IDS[editor.type]
    try:
        get_registry().resolve(prompt_id, family, constraint)
    except (InvalidVersion, NoMatchingVersion, PromptNotFound) as exc:
        index = body.prompt_components.index(editor)
        loc: list[str | int] = ["prompt_components", index, "payload", "prompt_version"]
        raise PlanError([field_error(loc, str(exc), constraint)]) from None


def editor_component(body: V4SuggestionsRequest) -> EditorComponent:
    """The one completion or generation component (422 when there is none or several)."""
    editors = [c for c in body.prompt_components if isinstance(c, EditorComponent)]
    if len(editors) != 1:
        raise PlanError(
            [
                field_error(
                    ["prompt_components"],
                    f"exactly one {COMPLETION} or {GENERATION} component is required",
                    [c.type for c in body.prompt_components],
                )
            ]
        )
    return editors[0]


def as_v2(body: V4SuggestionsRequest, editor: EditorComponent) -> SuggestionsBody:
    """The v2 request the v2 use cases plan from (checked against v2's limits, as a v2 body is)."""
    payload = editor.payload
    metadata = body.model_metadata
    provider, name, endpoint, api_key, identifier = (
        payload.model_provider,
        payload.model_name,
        payload.model_endpoint,
        payload.model_api_key,
        payload.model_identifier,
    )
    if metadata is not None and not endpoint:
        kind = metadata.provider.strip().lower()
        provider = PROVIDER_LITELLM if kind in OPENAI_COMPATIBLE else metadata.provider
        name = name or metadata.name
        endpoint, api_key = metadata.endpoint, api_key or metadata.api_key
        identifier = identifier or metadata.identifier
    prompt = payload.prompt
    v2 = {
        "current_file": {
            "file_name": payload.file_name,
            "language_identifier": payload.language_identifier,
            "content_above_cursor": payload.content_above_cursor,
            "content_below_cursor": payload.content_below_cursor,
        },
        "stream": payload.stream,
        "context": [
            c.payload.model_dump()
            for c in body.prompt_components
            if isinstance(c, ContextComponent)
        ],
        "prompt_version": v2_prompt_version(payload),
        "prompt": [m.model_dump() for m in prompt] if isinstance(prompt, list) else prompt,
        "prompt_id": payload.prompt_id,
        "model_provider": provider,
        "model_name": name,
        "model_endpoint": endpoint,
        "model_api_key": api_key,
        "model_identifier": identifier,
    }
    return msgspec.convert(v2, SuggestionsBody)


def model_metadata(plan: Plan) -> dict[str, Any]:
    return {"engine": ENGINE, "name": plan.model_name, "lang": plan.lang}


def sse_event(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {orjson.dumps(data).decode()}\n\n"


class SseEvents:
    """A :class:`TextStream` of SSE frames around a model's text deltas.

    ``stream_start`` comes first, one ``content_chunk`` per (filtered, non-empty) delta, and
    ``stream_end`` once the model finished. When the model fails after ``stream_start`` (the
    status is sent), an ``event: error`` with ``{"message": "Inference failed: ..."}`` ends the
    stream instead of ``stream_end``: GitLab documents no error event here, and a client that
    does not know it still sees a stream without ``stream_end``, never a silent cut. For a
    user's token the event carries ``user_message`` (the generic one) instead of the cause.
    """

    def __init__(
        self,
        inner: TextStream,
        plan: Plan,
        text_filter: TextFilter | None,
        user_message: str | None = None,
    ) -> None:
        self._inner = inner
        self._plan = plan
        self._filter = text_filter
        self._user_message = user_message

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    @staticmethod
    def _chunk(text: str) -> str:
        return sse_event("content_chunk", {"choices": [{"delta": {"content": text}, "index": 0}]})

    async def _iterate(self) -> AsyncIterator[str]:
        text_filter = self._filter
        yield sse_event(
            "stream_start",
            {
                "metadata": {
                    "model": model_metadata(self._plan),
                    "timestamp": int(time.time()),
                    "enabled_feature_flags": [],
                }
            },
        )
        try:
            async for delta in self._inner:
                text = text_filter.feed(delta) if text_filter is not None else delta
                if text:
                    yield self._chunk(text)
        except ModelError as exc:
            caller = "user" if self._user_message is not None else "instance"
            log.warning(
                "model_stream_failed", reason=exc.reason, dialect="gitlab_sse", caller=caller
            )
            message = self._user_message or f"Inference failed: {exc.reason}"
            yield sse_event("error", {"message": message})
            return
        tail = text_filter.flush() if text_filter is not None else ""
        if tail:
            yield self._chunk(tail)
        yield sse_event("stream_end", None)

    async def aclose(self) -> None:
        await self._inner.aclose()


def response_body(plan: Plan, text: str, finish_reason: str) -> dict[str, Any]:
    return {
        "choices": [{"text": text, "index": 0, "finish_reason": finish_reason}],
        "metadata": {"model": model_metadata(plan), "timestamp": int(time.time())},
    }


async def suggestions(request: Request) -> Response | RawTextStreamResponse:
    gateway: Gateway = request.app.state.gateway
    principal = await authenticate(request, user_tokens=True)
    if isinstance(principal, Response):
        return principal
    if not principal.can(*_ANY_SCOPE):
        return detail("Unauthorized to access code suggestions", 403)
    body = await parse_body(request, V4SuggestionsRequest)
    if isinstance(body, Response):
        return body
    try:
        editor = editor_component(body)
        use_case = _USE_CASES[editor.type]
        if not principal.can(*use_case.scopes):
            return detail(use_case.unauthorized, 403)
        payload = as_v2(body, editor)
        check_prompt_constraint(body, editor, payload.model_name)
        check_prompt_shape(payload)
        payload, target, vendor = target_for(gateway, principal, use_case.feature, payload)
        plan = with_vendor(use_case.plan(payload, target), vendor)
    except PlanError as exc:
        return json_response({"detail": exc.detail}, exc.status)

    try:
        if payload.stream:
            stream = await gateway.models.stream(plan.request)
            text_filter = plan.stream_filter() if plan.stream_filter else None
            user_message = model_unavailable_message(request) if principal.user_token else None
            return RawTextStreamResponse(
                SseEvents(stream, plan, text_filter, user_message),
                headers={STREAMING_FORMAT_HEADER: "sse"},
            )
        result = await gateway.models.complete(plan.request)
    except (EndpointNotAllowed, ModelError) as exc:
        return model_failure(request, principal, exc)
    return json_response(response_body(plan, plan.postprocess(result.text), result.finish_reason))

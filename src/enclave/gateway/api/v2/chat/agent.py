"""``POST /v2/chat/agent``: Duo Chat's agent endpoint, answered as newline-delimited JSON.

GitLab's gateway runs a ReAct tool loop here; this gateway answers plainly: the conversation
(with each message's page context, current file and additional context written into it) goes
to the model's chat API with the system prompt of the registry's ``chat/agent`` definition for
the model's family, and the streamed
answer is relayed as ``application/x-ndjson``, one event per line::

    {"type":"final_answer_delta","data":{"text":"...","finish_reason":null}}   per model delta
    {"type":"final_answer_delta","data":{"text":"","finish_reason":"stop"}}   the model's end
    {"type":"usage","data":{"usage":{"<model>":{"input_tokens":..,"output_tokens":..}}}}
    {"type":"error","data":{"message":"...","retryable":false}}   model failed mid-answer (last)

The usage line is GitLab 18's (per model, last), sent when the model reports usage.

Scopes: ``duo_classic_chat`` (GitLab 18) or ``duo_chat``. A token with ``duo_chat`` only is
refused with GitLab 18's ``403 "Duo Core no longer authorized to access Duo Classic Chat"``
when the request comes from a GitLab 18 instance (``X-Gitlab-Version`` 18 or later) or from a
Duo Core enablement (``X-Gitlab-Feature-Enablement-Type: duo_core``), unless the question
mentions ``@GitLabDuo`` (the merge request review flow GitLab still allows); GitLab 17
instances, which cannot mint ``duo_classic_chat``, keep being served.

Pipeline: authenticate and the scopes (401/503/429/403) → body (413/422) → model from
``model_metadata``, required for self-hosted models (422, as ``/v1/prompts``) → endpoint (403)
→ model; failures before the first byte are answered as in code suggestions (503/429).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import orjson
from pydantic import Field, StringConstraints
from starlette.requests import Request
from starlette.responses import Response

from enclave.common import wire
from enclave.common.features import Feature
from enclave.common.logging import get_logger
from enclave.gateway.api.schemas import BodyModel, Str255
from enclave.gateway.api.steps import (
    authenticate,
    gitlab_major,
    model_error_response,
    parse_body,
)
from enclave.gateway.auth.verify import Principal
from enclave.gateway.http import detail, json_response
from enclave.gateway.models.base import (
    ChatMessage,
    EndpointNotAllowed,
    ModelError,
    ModelRequest,
    TextStream,
    Usage,
)
from enclave.gateway.prompts.registry import get_registry
from enclave.gateway.streaming import RawTextStreamResponse
from enclave.gateway.targets import ModelMetadata, PlanError, metadata_target, target_request
from enclave.gateway.tenants import Tenants, choose_target

if TYPE_CHECKING:
    from enclave.gateway.runtime import Gateway

log = get_logger(__name__)

NDJSON_MEDIA_TYPE: Final = "application/x-ndjson"
AGENT_PROMPT_ID: Final = "chat/agent"

ChatContent = Annotated[str, StringConstraints(max_length=200_000)]


class PageContext(BodyModel):
    type: Str255
    content: ChatContent = ""


class CurrentFile(BodyModel):
    file_path: Annotated[str, StringConstraints(max_length=4096)]
    data: ChatContent
    selected_code: bool = False


class AdditionalContext(BodyModel):
    category: Str255
    id: Str255 | None = None
    content: ChatContent = ""
    metadata: dict[str, Any] | None = None


class AgentMessage(BodyModel):
    role: Literal["user", "assistant", "system"]
    content: ChatContent
    context: PageContext | None = None
    current_file: CurrentFile | None = None
    additional_context: Annotated[
        list[AdditionalContext], Field(default_factory=list, max_length=100)
    ]
    agent_scratchpad: dict[str, Any] | None = None  # accepted; there is no tool loop


class AgentRequest(BodyModel):
    messages: Annotated[list[AgentMessage], Field(min_length=1, max_length=200)]
    options: dict[str, Any] | None = None
    unavailable_resources: Annotated[list[Str255], Field(default_factory=list, max_length=50)]
    model_metadata: ModelMetadata | None = None


def message_text(message: AgentMessage) -> str:
    """The message's content with the context it carries written after it."""
    parts = [message.content]
    if message.context is not None and message.context.content:
        parts.append(f"Context ({message.context.type}):\n{message.context.content}")
    current = message.current_file
    if current is not None:
        what = "Selected code from" if current.selected_code else "Current file"
        parts.append(f"{what} {current.file_path}:\n```\n{current.data}\n```")
    for item in message.additional_context:
        name = f"{item.category} {item.id}" if item.id else item.category
        parts.append(f"Additional context ({name}):\n{item.content}")
    return "\n\n".join(parts)


def plan_agent(body: AgentRequest, tenants: Tenants, principal: Principal) -> ModelRequest:
    """The model call: ``chat/agent``'s instructions and the conversation, on the model
    ``model_metadata`` names (or, on a shared gateway, the vendor model for Duo Chat)."""
    target, vendor = choose_target(
        tenants,
        principal,
        Feature.DUO_CHAT.value,
        body.model_metadata is not None,
        lambda: metadata_target(body.model_metadata),
    )
    family = body.model_metadata.name if body.model_metadata is not None else None
    if vendor is not None:
        family = vendor.family
    definition = get_registry().resolve(AGENT_PROMPT_ID, family)
    history = tuple(ChatMessage(m.role, message_text(m)) for m in body.messages)
    request = target_request(
        target,
        definition.conversation(history),
        None,
        definition.params,
        prompt_id=AGENT_PROMPT_ID,
    )
    return vendor.apply(request) if vendor is not None else request


def ndjson_event(kind: str, data: Any) -> str:
    return orjson.dumps({"type": kind, "data": data}).decode() + "\n"


UP_DUO_CLASSIC_CHAT: Final = "duo_classic_chat"
DUO_CORE_CUTOFF: Final = "Duo Core no longer authorized to access Duo Classic Chat"
GITLAB_DUO_MENTION: Final = "@GitLabDuo"
_H_ENABLEMENT_TYPE: Final = "x-gitlab-feature-enablement-type"


def classic_chat_cut_off(request: Request) -> bool:
    """True when a ``duo_chat``-only token falls under GitLab 18's Duo Core cutoff."""
    if request.headers.get(_H_ENABLEMENT_TYPE, "").strip().lower() == "duo_core":
        return True
    major = gitlab_major(request.headers.get(wire.H_VERSION))
    return major is not None and major >= 18


def mentions_gitlab_duo(body: AgentRequest) -> bool:
    users = [m for m in body.messages if m.role == "user"]
    return bool(users) and GITLAB_DUO_MENTION in users[-1].content


class NdjsonEvents:
    """A :class:`TextStream` of ndjson agent events from a model's text deltas."""

    def __init__(self, inner: TextStream, model_name: str = "") -> None:
        self._inner = inner
        self._model_name = model_name

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        # Each delta is held until the next arrives, so the last one can carry the model's
        # finish_reason (GitLab 18); the others carry null.
        held: str | None = None
        try:
            async for delta in self._inner:
                if not delta:
                    continue
                if held is not None:
                    yield ndjson_event("final_answer_delta", {"text": held, "finish_reason": None})
                held = delta
        except ModelError as exc:
            if held is not None:
                yield ndjson_event("final_answer_delta", {"text": held, "finish_reason": None})
            log.warning("model_stream_failed", reason=exc.reason, dialect="ndjson")
            yield ndjson_event(
                "error", {"message": f"Inference failed: {exc.reason}", "retryable": False}
            )
            return
        finish_reason = getattr(self._inner, "finish_reason", None)
        yield ndjson_event(
            "final_answer_delta",
            {
                "text": held or "",
                "finish_reason": finish_reason if isinstance(finish_reason, str) else "stop",
            },
        )
        usage = getattr(self._inner, "usage", None)
        if isinstance(usage, Usage):
            counts = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
            yield ndjson_event("usage", {"usage": {self._model_name or "model": counts}})

    async def aclose(self) -> None:
        await self._inner.aclose()


async def agent(request: Request) -> Response | RawTextStreamResponse:
    gateway: Gateway = request.app.state.gateway
    scopes = get_registry().unit_primitives(AGENT_PROMPT_ID)
    principal = await authenticate(request)
    if isinstance(principal, Response):
        return principal
    if not principal.can(*scopes):
        return detail("Unauthorized to access duo_chat", 403)
    body = await parse_body(request, AgentRequest)
    if isinstance(body, Response):
        return body
    if (
        not principal.can(UP_DUO_CLASSIC_CHAT)
        and classic_chat_cut_off(request)
        and not mentions_gitlab_duo(body)
    ):
        return detail(DUO_CORE_CUTOFF, 403)
    try:
        model_request = plan_agent(body, gateway.tenants, principal)
    except PlanError as exc:
        return json_response({"detail": exc.detail}, exc.status)
    try:
        stream = await gateway.models.stream(model_request)
    except EndpointNotAllowed as exc:
        log.warning("model_endpoint_refused", reason=exc.reason)
        return detail(exc.reason, 403)
    except ModelError as exc:
        return model_error_response(exc)
    return RawTextStreamResponse(
        NdjsonEvents(stream, model_request.model), headers={"content-type": NDJSON_MEDIA_TYPE}
    )

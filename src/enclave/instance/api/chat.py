"""``POST /api/v4/chat/completions``: GitLab's REST Duo Chat endpoint.

The question goes to the model of the chat feature it belongs to: a leading slash command picks
a chat sub-feature (``/explain`` → ``duo_chat_explain_code``, ``/tests``, ``/refactor``,
``/fix``, ``/troubleshoot``), which uses its own setting or, when unassigned, ``duo_chat``'s.
The instance forwards it to the gateway's ``/v1/chat/{invokable}`` (GitLab's chat API with one
``prompt_components`` entry carrying the model, endpoint, identifier and key, provider
``litellm``) and answers the model's text as a JSON string, as GitLab does.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from enclave.common import wire
from enclave.common.logging import get_logger
from enclave.instance.api.deps import authenticated, context_of
from enclave.instance.api.errors import InstanceAPIError
from enclave.instance.api.forwarding import forward_identity, resolve_for_request
from enclave.instance.api.middleware import annotate
from enclave.instance.api.relay import gateway_error
from enclave.instance.features import (
    FEATURE_UNIT_PRIMITIVES,
    Feature,
    ResolvedModel,
)
from enclave.instance.gateway_client import (
    GatewayUnavailableError,
    gateway_headers,
)
from enclave.instance.pats import AI_SCOPES, Principal

log = get_logger(__name__)

router = APIRouter(tags=["chat"])

MAX_CONTENT_CHARS = 100_000

# Slash command → (feature, gateway invokable, instruction put before the user's text).
SLASH_COMMANDS: dict[str, tuple[Feature, str, str]] = {
    "/explain": (Feature.DUO_CHAT_EXPLAIN_CODE, "explain_code", "Explain this code:"),
    "/tests": (Feature.DUO_CHAT_WRITE_TESTS, "write_tests", "Write tests for this code:"),
    "/refactor": (Feature.DUO_CHAT_REFACTOR_CODE, "refactor_code", "Refactor this code:"),
    "/fix": (Feature.DUO_CHAT_FIX_CODE, "agent", "Fix the problems in this code:"),
    "/troubleshoot": (
        Feature.DUO_CHAT_TROUBLESHOOT_JOB,
        "troubleshoot_job",
        "Find the root cause of this failed CI job and suggest a fix:",
    ),
}


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # resource_type, referer_url, ... are accepted

    content: str = Field(
        min_length=1,
        max_length=MAX_CONTENT_CHARS,
        description="The question; a leading /explain, /tests, /refactor, /fix or "
        "/troubleshoot picks that chat feature.",
    )
    additional_context: list[dict[str, Any]] | None = Field(
        None, description="Extra context items (type, name, content), as GitLab's clients send."
    )


def route_question(content: str) -> tuple[Feature, str, str]:
    """The feature, the gateway invokable and the text for the model."""
    head, _, rest = content.strip().partition(" ")
    command = SLASH_COMMANDS.get(head.lower())
    if command is None:
        return Feature.DUO_CHAT, "agent", content.strip()
    feature, invokable, instruction = command
    return feature, invokable, f"{instruction}\n\n{rest.strip()}".strip()


def chat_body(text: str, context: list[dict[str, Any]], model: ResolvedModel) -> dict[str, Any]:
    if context:
        parts = [
            f"<{item.get('type', 'context')} name={item.get('name', '')!r}>\n"
            f"{item.get('content', '')}\n</{item.get('type', 'context')}>"
            for item in context
        ]
        text = "\n\n".join([*parts, text])
    payload: dict[str, Any] = {
        "content": [{"role": "user", "content": text}],
        "provider": "litellm",
        "model": model.family,
    }
    if model.endpoint:
        payload["model_endpoint"] = model.endpoint
    if model.api_key:
        payload["model_api_key"] = model.api_key
    if model.identifier:
        payload["model_identifier"] = model.identifier
    return {
        "prompt_components": [
            {
                "type": "prompt",
                "metadata": {"source": "Enclave", "version": wire.INSTANCE_VERSION},
                "payload": payload,
            }
        ],
        "stream": False,
    }


@router.post("/api/v4/chat/completions", summary="Ask Duo Chat (GitLab's REST chat endpoint)")
async def chat_completions(
    request: Request,
    body: ChatRequest,
    principal: Annotated[Principal, Depends(authenticated(AI_SCOPES))],
) -> Any:
    ctx = context_of(request)
    feature, invokable, text = route_question(body.content)
    annotate(request, feature=feature.value)
    model, effective = await resolve_for_request(ctx, feature)
    annotate(request, model=model.name)
    scopes = {FEATURE_UNIT_PRIMITIVES[feature], wire.UP_DUO_CHAT}
    identity = forward_identity(ctx, request, principal)
    try:
        upstream = await ctx.gateway.post(
            f"/v1/chat/{invokable}",
            orjson.dumps(chat_body(text, body.additional_context or [], model)),
            gateway_headers(
                ctx.minter.token(scopes).token,
                identity,
                verbose_ai_logs=effective.enabled_instance_verbose_ai_logs,
            ),
            base_url=effective.ai_gateway_url,
            timeout_s=effective.ai_gateway_timeout_seconds,
        )
    except GatewayUnavailableError as exc:
        raise gateway_error(exc) from None
    try:
        content = await upstream.read()
    finally:
        upstream.release()
    if upstream.status != 200:
        # The gateway's error, as it came (its origin is the gateway, not the instance).
        return JSONResponse(_json_or_text(content), status_code=upstream.status)
    data = _json_or_text(content)
    answer = data.get("response") if isinstance(data, dict) else data
    if not isinstance(answer, str):
        raise InstanceAPIError(502, "the AI gateway answered without a chat response")
    return answer


def _json_or_text(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return {"message": content.decode("utf-8", "replace")[:2000]}

"""``POST /api/v4/chat/completions``: GitLab's REST Duo Chat endpoint.

The question goes to the model of the chat feature it belongs to: a leading slash command picks
a chat sub-feature (``/explain`` → ``duo_chat_explain_code``, ``/tests``, ``/refactor``,
``/fix``, ``/troubleshoot``), which uses its own setting or, when unassigned, ``duo_chat``'s.
With the default ``instance.ai_gateway_api = gitlab18`` the instance speaks as GitLab 18 does:
chat goes to the gateway's ``/v2/chat/agent`` (``messages`` + ``model_metadata``, a token with
``duo_classic_chat``), whose ndjson answer is read back (``final_answer_delta`` texts, the
``finish_reason`` and the last ``usage`` line, logged with the request); slash commands go to
``/v1/prompts/chat%2F<task>`` with the prompt's current inputs (``selected_text``,
``file_content``, ``file_content_reuse``, ``language_info``, ``input``). With ``gitlab17`` it
calls ``/v1/chat/{invokable}`` (GitLab 17's chat API with one ``prompt_components`` entry
carrying the model, endpoint, identifier and key, provider ``litellm``). Either way the answer
is the model's text as a JSON string, as GitLab does, or with ``"stream": true`` the text
relayed chunk by chunk.

A ``current_file`` (the file open in the IDE: name, selected text, and optionally the text
around the cursor) goes into the model's context before the question, like
``additional_context`` items.

When the answer cannot be had, the error carries GitLab's Duo Chat error code, in the body
(``{"message": "... Error code: A1001", "error_code": "A1001"}``) and at the end of the message
as GitLab's UI shows it (``doc/administration/gitlab_duo_self_hosted/troubleshooting.md``):

======  ======  ==========================================================================
code    status  cause
======  ======  ==========================================================================
A1000   504     the gateway did not answer in time (connecting, or mid-answer)
A1001   502     the gateway cannot be reached, or refused the request (a 4xx from it)
A1002   502     the gateway answered 200 without a usable (non-empty, parsable) response
A1003   502     the model failed while answering (gateway 421/503, body broken off); 429
                when the model is rate limited (with the gateway's ``Retry-After``)
A9999   502     anything else (another gateway status; 500 for an unexpected instance error)
======  ======  ==========================================================================

A stream that breaks after it started cannot change its status any more: the connection is
aborted (see ``relay``), so the client sees an incomplete response rather than a truncated one
passed off as complete.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Annotated, Any, Final
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from enclave.common import wire
from enclave.common.features import FEATURE_PROMPT_IDS
from enclave.common.http1 import Response as UpstreamResponse
from enclave.common.logging import get_logger
from enclave.instance import gateway_api, limits
from enclave.instance.ai_settings import EffectiveAiSettings
from enclave.instance.api.ai_features import model_metadata
from enclave.instance.api.deps import authenticated, context_of
from enclave.instance.api.errors import InstanceAPIError
from enclave.instance.api.forwarding import (
    forward_identity,
    post_with_fallback,
    resolve_for_request,
)
from enclave.instance.api.middleware import annotate
from enclave.instance.api.relay import (
    NDJSON,
    DisconnectAwareStreamingResponse,
    UpstreamStreamError,
    caller_message,
    gateway_reason,
    json_or_text,
    read_body,
    relay,
    upstream_chunks,
)
from enclave.instance.api.routing import AiTextRoute
from enclave.instance.context import InstanceContext
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

router = APIRouter(tags=["chat"], route_class=AiTextRoute)

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


# GitLab's Duo Chat error codes.
A1000_TIMEOUT: Final = "A1000"
A1001_GATEWAY: Final = "A1001"
A1002_NO_ANSWER: Final = "A1002"
A1003_MODEL: Final = "A1003"
A9999_UNKNOWN: Final = "A9999"
# Gateway statuses that mean the model failed (421 prompt registry, 503 "Inference failed").
MODEL_FAILED_STATUSES: Final = frozenset({421, 503})
MAX_REASON_CHARS: Final = 500
MAX_FILE_NAME_CHARS: Final = 1024
# What chat streams are relayed as (the gateway's raw text streams' type).
TEXT_STREAM: Final = "text/event-stream; charset=utf-8"


class CurrentFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    file_name: str = Field(min_length=1, max_length=MAX_FILE_NAME_CHARS)
    selected_text: str = Field(max_length=MAX_CONTENT_CHARS)
    content_above_cursor: str | None = Field(None, max_length=MAX_CONTENT_CHARS)
    content_below_cursor: str | None = Field(None, max_length=MAX_CONTENT_CHARS)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # referer_url, ... are accepted

    content: str = Field(
        min_length=1,
        max_length=MAX_CONTENT_CHARS,
        description="The question; a leading /explain, /tests, /refactor, /fix or "
        "/troubleshoot picks that chat feature.",
    )
    additional_context: list[dict[str, Any]] | None = Field(
        None, description="Extra context items (type, name, content), as GitLab's clients send."
    )
    current_file: CurrentFile | None = Field(
        None, description="The file open in the editor; put into the model's context."
    )
    # GitLab's resource the question is about (issue, epic, ...): accepted, not used here.
    resource_type: str | None = Field(None, max_length=255)
    resource_id: int | str | None = None
    stream: bool = Field(False, description="Relay the answer as it is generated.")


class ChatError(InstanceAPIError):
    """A chat failure with GitLab's error code, in the body and at the end of the message."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(
            status,
            headers=headers,
            extra={"error_code": code},
            message=f"{message} Error code: {code}",
        )
        self.code = code


def route_question(content: str) -> tuple[Feature, str, str]:
    """The feature, the gateway invokable and the text for the model."""
    head, _, rest = content.strip().partition(" ")
    command = SLASH_COMMANDS.get(head.lower())
    if command is None:
        return Feature.DUO_CHAT, "agent", content.strip()
    feature, invokable, instruction = command
    return feature, invokable, f"{instruction}\n\n{rest.strip()}".strip()


def current_file_context(current_file: CurrentFile) -> dict[str, Any]:
    """The editor's file as a context item, its parts in tags the model can tell apart."""
    parts = [f"<selected_text>\n{current_file.selected_text}\n</selected_text>"]
    if current_file.content_above_cursor:
        parts.insert(
            0,
            f"<content_above_cursor>\n{current_file.content_above_cursor}\n</content_above_cursor>",
        )
    if current_file.content_below_cursor:
        parts.append(
            f"<content_below_cursor>\n{current_file.content_below_cursor}\n</content_below_cursor>"
        )
    return {"type": "current_file", "name": current_file.file_name, "content": "\n".join(parts)}


def with_context(text: str, context: list[dict[str, Any]]) -> str:
    """The question with each context item before it, as a tagged block of its own."""
    if not context:
        return text
    parts = [
        f"<{item.get('type', 'context')} name={item.get('name', '')!r}>\n"
        f"{item.get('content', '')}\n</{item.get('type', 'context')}>"
        for item in context
    ]
    return "\n\n".join([*parts, text])


def chat_body(
    text: str, context: list[dict[str, Any]], model: ResolvedModel, *, stream: bool = False
) -> dict[str, Any]:
    text = with_context(text, context)
    payload: dict[str, Any] = {
        "content": [{"role": "user", "content": text}],
        "provider": "litellm",
        "model": model.family or "general",
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
        "stream": stream,
    }


def agent_body(text: str, context: list[dict[str, Any]], model: ResolvedModel) -> dict[str, Any]:
    """GitLab 18's ``/v2/chat/agent`` body. Context goes into the message's text: GitLab's
    gateway wants an ``include_<category>_context`` scope per ``additional_context`` item."""
    text = with_context(text, context)
    body: dict[str, Any] = {
        "messages": [
            {
                "role": "user",
                "content": text,
                "context": None,
                "current_file": None,
                "additional_context": [],
            }
        ],
        "unavailable_resources": [],
    }
    metadata = model_metadata(model)
    if metadata is not None:  # vendored: none, the vendored gateway chooses the model
        body["model_metadata"] = metadata
    return body


def task_inputs(call: ChatCall) -> dict[str, Any]:
    """The ``chat/<task>`` prompt's inputs for a slash command (GitLab 18's names)."""
    current = call.current_file
    question = call.question
    others = [item for item in call.context if item.get("type") != "current_file"]
    extra = "\n\n".join(str(item.get("content", "")) for item in others if item.get("content"))
    if current is not None:
        selected, instruction = current.selected_text, question
        file_content = "".join(
            part
            for part in (
                current.content_above_cursor,
                current.selected_text,
                current.content_below_cursor,
            )
            if part
        )
        file_name = current.file_name
    else:
        selected, instruction, file_content, file_name = question, "", "", ""
    if extra:
        instruction = f"{instruction}\n\n{extra}".strip()
    inputs: dict[str, Any] = {"selected_text": selected, "language_info": ""}
    if call.feature != Feature.DUO_CHAT_TROUBLESHOOT_JOB:
        inputs.update(
            {
                "file_name": file_name,
                "file_content": file_content,
                "file_content_reuse": "",
                "input": instruction,
            }
        )
    return inputs


@dataclass(frozen=True)
class ChatCall:
    """A question checked and routed: the user may ask it and a model serves its feature."""

    feature: Feature
    invokable: str
    text: str
    context: list[dict[str, Any]]
    model: ResolvedModel
    effective: EffectiveAiSettings
    question: str = ""  # the text after a slash command
    current_file: CurrentFile | None = None


async def prepare_chat(request: Request, principal: Principal, body: ChatRequest) -> ChatCall:
    """The checks every chat goes through, whichever API asked (REST here, GraphQL's
    ``aiAction``): the user's chat limit, the slash command, the feature's setting and model.
    Raises :class:`InstanceAPIError` (429, 403, 500) when the question cannot be asked."""
    ctx = context_of(request)
    await ctx.limits.check(limits.CHAT, principal.user_id)
    feature, invokable, text = route_question(body.content)
    annotate(request, feature=feature.value, stream=body.stream)
    model, effective = await resolve_for_request(ctx, feature)
    annotate(request, model=model.name)
    context = list(body.additional_context or [])
    if body.current_file is not None:
        context.insert(0, current_file_context(body.current_file))
    question = body.content.strip().partition(" ")[2].strip()
    return ChatCall(
        feature, invokable, text, context, model, effective, question, body.current_file
    )


def gateway_request(ctx: InstanceContext, call: ChatCall, *, stream: bool) -> tuple[str, bytes]:
    """Path and body for the gateway, in the API generation the instance speaks."""
    if not gateway_api.is_gitlab18(ctx):
        legacy = chat_body(call.text, call.context, call.model, stream=stream)
        return f"/v1/chat/{call.invokable}", orjson.dumps(legacy)
    if call.feature == Feature.DUO_CHAT:
        return "/v2/chat/agent", orjson.dumps(agent_body(call.text, call.context, call.model))
    prompt_id = FEATURE_PROMPT_IDS[call.feature.value]
    body: dict[str, Any] = {
        "inputs": task_inputs(call),
        "prompt_version": gateway_api.prompt_version(ctx, prompt_id),
        "stream": stream,
    }
    metadata = model_metadata(call.model)
    if metadata is not None:
        body["model_metadata"] = metadata
    return "/v1/prompts/" + quote(prompt_id, safe=""), orjson.dumps(body)


async def ask_gateway(
    request: Request, principal: Principal, call: ChatCall, *, stream: bool
) -> Any:
    """Send a prepared question to the gateway: the answer text, or with ``stream`` the
    relayed stream; failures raise :class:`ChatError` with GitLab's chat error codes."""
    ctx = context_of(request)
    scopes = {FEATURE_UNIT_PRIMITIVES[call.feature], *gateway_api.chat_scopes(ctx)}
    identity = forward_identity(ctx, request, principal)

    async def send(serving: ResolvedModel) -> UpstreamResponse:
        path, payload = gateway_request(ctx, replace(call, model=serving), stream=stream)
        route = call.effective.route(serving.vendored)
        return await ctx.gateway.post(
            path,
            payload,
            gateway_headers(
                ctx.minter.token(scopes, audience=route.audience).token,
                identity,
                verbose_ai_logs=call.effective.enabled_instance_verbose_ai_logs,
                version=gateway_api.version_header(ctx),
                unit_primitive=gateway_api.unit_primitive_header(
                    ctx, FEATURE_UNIT_PRIMITIVES[call.feature]
                ),
            ),
            base_url=route.url,
            timeout_s=call.effective.ai_gateway_timeout_seconds,
        )

    try:
        upstream, model = await post_with_fallback(ctx, call.feature, call.model, send)
    except GatewayUnavailableError as exc:
        raise _unreachable(exc, request, principal) from None
    if model is not call.model:
        annotate(request, model=model.name)
    try:
        return await _answer(upstream, model, request, principal, stream=stream)
    except InstanceAPIError:
        raise
    except Exception:  # a bug must still reach the user as a chat error, not a bare 500
        upstream.close()
        log.exception("chat_failed")
        raise ChatError(
            500,
            A9999_UNKNOWN,
            "Duo Chat failed unexpectedly. Try again; if it keeps happening, ask an "
            "administrator to check the instance logs.",
        ) from None


@router.post("/api/v4/chat/completions", summary="Ask Duo Chat (GitLab's REST chat endpoint)")
async def chat_completions(
    request: Request,
    body: ChatRequest,
    principal: Annotated[Principal, Depends(authenticated(AI_SCOPES))],
) -> Any:
    call = await prepare_chat(request, principal, body)
    return await ask_gateway(request, principal, call, stream=body.stream)


async def _answer(
    upstream: UpstreamResponse,
    model: ResolvedModel,
    request: Request,
    principal: Principal,
    *,
    stream: bool,
) -> Any:
    agent = upstream.headers.get("Content-Type", "").startswith(NDJSON)
    if stream and upstream.status == 200:
        if agent:
            return ndjson_text_stream(upstream, request)
        return await relay(upstream, stream=True)
    try:
        content = await read_body(upstream)
    except InstanceAPIError as exc:
        if exc.status == 504:
            raise _timeout() from None
        raise ChatError(
            502,
            A1003_MODEL,
            "The answer broke off while the AI gateway was sending it. Try again; if it "
            "keeps happening, ask an administrator to check the gateway and model server logs.",
        ) from None
    if upstream.status != 200:
        raise _gateway_failure(upstream, content, model, request, principal)
    if agent:
        answer: Any = agent_answer(content, model, request, principal)
    else:
        data = json_or_text(content)
        answer = data.get("response") if isinstance(data, dict) else data
    if not isinstance(answer, str) or not answer.strip():
        log.warning("chat_answer_unusable", kind=type(answer).__name__)
        raise ChatError(
            502,
            A1002_NO_ANSWER,
            "The AI gateway answered without a usable response. Try again; if it keeps "
            "happening, ask an administrator to check the gateway logs and the model.",
        )
    return answer


def agent_events(lines: list[bytes]) -> list[dict[str, Any]]:
    """The ndjson lines as events (lines that are not JSON objects are skipped)."""
    events = []
    for line in lines:
        if not line.strip():
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("data"), dict):
            events.append(event)
    return events


def record_usage(request: Request, event: dict[str, Any]) -> None:
    """The ``usage`` line, in the request's log: GitLab 18's per-model map, or the flat
    counts older Enclave gateways sent."""
    data = event["data"]
    per_model = data.get("usage")
    counts = list(per_model.values()) if isinstance(per_model, dict) else [data]
    totals = {"input_tokens": 0, "output_tokens": 0}
    for item in counts:
        if isinstance(item, dict):
            for key in totals:
                value = item.get(key)
                totals[key] += value if isinstance(value, int) else 0
    annotate(request, **totals)


def agent_answer(
    content: bytes, model: ResolvedModel, request: Request, principal: Principal
) -> str:
    """The answer in a ``/v2/chat/agent`` ndjson body: its ``final_answer_delta`` texts; an
    ``error`` line is the model failing (A1003)."""
    parts: list[str] = []
    for event in agent_events(content.split(b"\n")):
        kind, data = event.get("type"), event["data"]
        if kind == "final_answer_delta" and isinstance(data.get("text"), str):
            parts.append(data["text"])
            if data.get("finish_reason"):
                annotate(request, finish_reason=str(data["finish_reason"])[:32])
        elif kind == "usage":
            record_usage(request, event)
        elif kind == "error":
            reason = str(data.get("message", "unknown error"))[:MAX_REASON_CHARS]
            raise ChatError(
                502,
                A1003_MODEL,
                caller_message(
                    request,
                    principal,
                    f"The model {model.name!r} failed while answering ({reason}). Try again; "
                    "if it keeps happening, ask an administrator to check the model server.",
                    status=502,
                ),
            )
    return "".join(parts)


def ndjson_text_stream(upstream: UpstreamResponse, request: Request) -> Response:
    """A ``/v2/chat/agent`` stream relayed as the answer's text, chunk by chunk; an ``error``
    line breaks the transfer off (as a broken raw text stream does)."""

    async def texts() -> AsyncIterator[bytes]:
        pending = b""
        chunks = upstream_chunks(upstream)
        try:
            async for chunk in chunks:
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for event in agent_events(lines):
                    kind, data = event.get("type"), event["data"]
                    if kind == "final_answer_delta":
                        if data.get("finish_reason"):
                            annotate(request, finish_reason=str(data["finish_reason"])[:32])
                        if data.get("text"):
                            yield str(data["text"]).encode()
                    elif kind == "usage":
                        record_usage(request, event)
                    elif kind == "error":
                        log.warning("chat_stream_model_failed")
                        raise UpstreamStreamError("model failed mid-answer")
        finally:
            await chunks.aclose()

    return DisconnectAwareStreamingResponse(
        texts(), status_code=200, headers={"content-type": TEXT_STREAM}
    )


def _timeout() -> ChatError:
    return ChatError(
        504,
        A1000_TIMEOUT,
        "The AI gateway did not answer in time. Try again, or ask a shorter question; if it "
        "keeps happening, ask an administrator to check the gateway and model server logs or "
        "raise the AI gateway timeout.",
    )


def _unreachable(
    error: GatewayUnavailableError, request: Request, principal: Principal
) -> ChatError:
    if error.status == 504:
        return _timeout()
    # The gateway client's message says which URL and what to check (administrators only).
    precise = error.message[:1].upper() + error.message[1:]
    return ChatError(502, A1001_GATEWAY, caller_message(request, principal, precise, status=502))


def _gateway_failure(
    upstream: UpstreamResponse,
    content: bytes,
    model: ResolvedModel,
    request: Request,
    principal: Principal,
) -> ChatError:
    status = upstream.status
    reason = gateway_reason(content, model.api_key, MAX_REASON_CHARS).rstrip(". ")
    log.warning("chat_gateway_error", status=status)

    def told(precise: str) -> str:
        return caller_message(request, principal, precise, status=status)

    if status in MODEL_FAILED_STATUSES:
        return ChatError(
            502,
            A1003_MODEL,
            told(
                f"The model {model.name!r} failed while answering ({reason}). Try again; if it "
                "keeps happening, ask an administrator to check the model server and the "
                "model's settings (Test connection)."
            ),
        )
    if status == 429:
        retry = upstream.headers.get("Retry-After")
        return ChatError(
            429,
            A1003_MODEL,
            "The model is busy (rate limited). Try again "
            + (f"in {retry} s." if retry else "in a moment."),
            headers={"Retry-After": retry} if retry else None,
        )
    if 400 <= status < 500:
        return ChatError(
            502,
            A1001_GATEWAY,
            told(
                f"The AI gateway refused the request ({status}: {reason}). Ask an administrator "
                "to check the gateway logs and that the gateway trusts this instance."
            ),
        )
    return ChatError(
        502,
        A9999_UNKNOWN,
        told(
            f"The AI gateway failed ({status}: {reason}). Try again; if it keeps happening, "
            "ask an administrator to check the gateway logs."
        ),
    )

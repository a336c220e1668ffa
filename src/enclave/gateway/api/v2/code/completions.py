"""``POST /v2/code/completions`` (and the legacy alias ``/v2/completions``).

``prompt_version`` 1: the gateway builds the prompt from the file around the cursor; 2: the
instance's pre-built string ``prompt`` (empty → built here, as 1; non-empty → used as the
prompt, where GitLab's own gateway fails); 3: ``prompt`` is a list of chat messages. Families
with a fill-in-the-middle layout go to ``/v1/completions``, chat-style ones to
``/v1/chat/completions`` (see :mod:`enclave.gateway.prompts.code_completions`).
"""

from __future__ import annotations

from functools import partial

from starlette.requests import Request
from starlette.responses import Response

from enclave.common import wire
from enclave.gateway.api.v2.code.schemas import SuggestionsRequest
from enclave.gateway.api.v2.code.suggestions import (
    Plan,
    PlanError,
    UseCase,
    messages_as_text,
    messages_from,
    model_target,
    serve,
)
from enclave.gateway.models.base import Api, ChatMessage, ModelRequest
from enclave.gateway.prompts.code_completions import (
    UnsupportedFamily,
    chat_completion_instruction,
    detect_language,
    family_spec,
    fim_prompt,
    trim_context,
)
from enclave.gateway.prompts.postprocess import FenceStripper, postprocess_chat
from enclave.gateway.streaming import RawTextStreamResponse

USE_CASE_NAME = "code completions"


def _unchanged(text: str) -> str:
    return text


def plan_completion(payload: SuggestionsRequest) -> Plan:
    target = model_target(payload)
    try:
        spec = family_spec(payload.model_name, USE_CASE_NAME)
    except UnsupportedFamily as exc:
        raise PlanError(str(exc)) from None
    current = payload.current_file
    lang = detect_language(current.language_identifier, current.file_name)
    prefix, suffix = trim_context(current.content_above_cursor, current.content_below_cursor, spec)

    prompt: str | None = None
    messages: tuple[ChatMessage, ...] = ()
    if payload.prompt_version == 3 and isinstance(payload.prompt, list):
        messages = messages_from(payload.prompt)
    elif payload.prompt_version == 2 and isinstance(payload.prompt, str) and payload.prompt:
        if spec.api == "chat":
            messages = (ChatMessage("user", payload.prompt),)
        else:
            prompt = payload.prompt
    elif spec.api == "chat":
        instruction = chat_completion_instruction(prefix, suffix, current.file_name, lang)
        messages = (ChatMessage("user", instruction),)
    else:
        prompt = fim_prompt(spec, prefix, suffix)

    api: Api = "chat" if messages else "completions"
    if target.force_text_completion and messages:
        prompt, messages, api = messages_as_text(messages), (), "completions"
    # Instruction-following answers get cleaned; raw FIM output is inserted as is.
    conversational = spec.api == "chat" or payload.prompt_version == 3
    request = ModelRequest(
        endpoint=target.endpoint,
        model=target.model,
        api=api,
        api_key=target.api_key,
        prompt=prompt,
        messages=messages,
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        stop=spec.stop,
        family=spec.name,
    )
    return Plan(
        request=request,
        model_name=(payload.model_identifier or "").strip() or spec.name,
        lang=lang,
        postprocess=(
            partial(postprocess_chat, prefix=current.content_above_cursor)
            if conversational
            else _unchanged
        ),
        stream_filter=FenceStripper if conversational else None,
    )


COMPLETIONS = UseCase(
    name=USE_CASE_NAME,
    scopes=(wire.UP_COMPLETE_CODE, wire.UP_CODE_SUGGESTIONS),
    plan=plan_completion,
)


async def completions(request: Request) -> Response | RawTextStreamResponse:
    return await serve(request, COMPLETIONS)

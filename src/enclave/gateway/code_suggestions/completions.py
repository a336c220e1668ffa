"""Code completions (`/v2/code/completions`, `/v2/completions`, and v4 completion components).

``prompt_version`` 1: the gateway builds the prompt from the file around the cursor; 2: the
instance's pre-built string ``prompt`` (empty → built here, as 1; non-empty → used as the
prompt, where GitLab's own gateway fails); 3: ``prompt`` is a list of chat messages. Families
with a fill-in-the-middle layout go to ``/v1/completions``, chat-style ones to
``/v1/chat/completions``: the registry's ``code_suggestions/completions`` definition for the
family says which (``definitions/code_suggestions/completions/<family>/``).
"""

from __future__ import annotations

from functools import partial
from typing import Final

from enclave.common import wire
from enclave.common.features import COMPATIBLE_FAMILIES, Feature
from enclave.gateway.code_suggestions.pipeline import (
    Plan,
    UseCase,
    messages_from,
)
from enclave.gateway.code_suggestions.schemas import SuggestionsBody
from enclave.gateway.models.base import ChatMessage
from enclave.gateway.prompts.context import detect_language, trim_context
from enclave.gateway.prompts.postprocess import (
    BlockEndFilter,
    FenceStripper,
    FilterChain,
    postprocess_chat,
    stop_at_block_end,
)
from enclave.gateway.prompts.registry import get_registry
from enclave.gateway.targets import ModelTarget, PlanError, target_request

USE_CASE_NAME = "code completions"
PROMPT_ID: Final = "code_suggestions/completions"
FAMILY_GENERAL: Final = "general"
# Families this endpoint serves (GitLab refuses mixtral and llama3 for completions; they follow
# the chat-style instruction as well as the others, so Enclave serves them the same way).
FAMILIES: Final = COMPATIBLE_FAMILIES[Feature.CODE_COMPLETIONS]


def _clean_chat_answer(text: str, prefix: str, suffix: str) -> str:
    return stop_at_block_end(postprocess_chat(text, prefix), prefix, suffix)


def completion_family(model_name: str | None) -> str:
    """The family (case-insensitive; none means general), or PlanError for unknown ones."""
    family = (model_name or FAMILY_GENERAL).strip().lower()
    if family not in FAMILIES:
        raise PlanError(
            f"model {model_name or ''} is not supported by use case {USE_CASE_NAME} and "
            f"provider litellm; supported model families: {', '.join(sorted(FAMILIES))}"
        )
    return family


def plan_completion(payload: SuggestionsBody, target: ModelTarget) -> Plan:
    family = completion_family(payload.model_name)
    definition = get_registry().resolve(PROMPT_ID, family)
    params = definition.params
    current = payload.current_file
    lang = detect_language(current.language_identifier, current.file_name)
    prefix, suffix = trim_context(current.content_above_cursor, current.content_below_cursor)

    prompt: str | None = None
    messages: tuple[ChatMessage, ...] = ()
    if payload.prompt_version == 3 and isinstance(payload.prompt, list):
        messages = messages_from(payload.prompt)
    elif payload.prompt_version == 2 and isinstance(payload.prompt, str) and payload.prompt:
        if definition.api == "chat":
            messages = (ChatMessage("user", payload.prompt),)
        else:
            prompt = payload.prompt
    else:
        rendered = definition.render(
            {
                "prefix": prefix,
                "suffix": suffix,
                "file_name": current.file_name,
                "language": lang or "",
            }
        )
        prompt, messages = rendered.prompt, rendered.messages

    # Instruction-following answers get cleaned; raw FIM output is inserted as is.
    conversational = definition.api == "chat" or payload.prompt_version == 3
    request = target_request(
        target,
        messages,
        None if messages else prompt,
        params,
        family=family,
        prompt_id=PROMPT_ID,
    )
    # Every answer stops where it leaves the cursor's block (models like to go on with the next
    # function); instruction-following answers also lose fences and repeated code first.
    above, below = current.content_above_cursor, current.content_below_cursor
    if conversational:
        postprocess = partial(_clean_chat_answer, prefix=above, suffix=below)
    else:
        postprocess = partial(stop_at_block_end, prefix=above, suffix=below)

    def stream_filter() -> FilterChain:
        block = BlockEndFilter(above, below)
        return FilterChain(FenceStripper(), block) if conversational else FilterChain(block)

    return Plan(
        request=request,
        model_name=(payload.model_identifier or "").strip() or family,
        lang=lang,
        postprocess=postprocess,
        stream_filter=stream_filter,
    )


COMPLETIONS = UseCase(
    name=USE_CASE_NAME,
    feature=Feature.CODE_COMPLETIONS,
    scopes=(wire.UP_COMPLETE_CODE, wire.UP_CODE_SUGGESTIONS),
    plan=plan_completion,
)

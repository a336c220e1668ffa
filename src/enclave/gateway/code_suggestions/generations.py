"""Code generations (`/v2/code/generations`, v4 generation components).

The instance's prompt, verbatim, as one user message.

Parameters as GitLab's gateway sends them (``max_tokens`` 2048, ``stop ["</new_code>"]``,
``temperature`` 0.2, ``top_p`` 0.95); ``model.name`` is ``custom_openai/<family>``. Without a
prompt the gateway writes its own instruction from the file around the cursor: the registry's
``code_suggestions/generations`` definition, whose parameters apply either way.
"""

from __future__ import annotations

from typing import Final

from enclave.common import wire
from enclave.common.features import Feature
from enclave.gateway.code_suggestions.completions import FAMILY_GENERAL
from enclave.gateway.code_suggestions.pipeline import (
    Plan,
    UseCase,
    messages_from,
)
from enclave.gateway.code_suggestions.schemas import SuggestionsBody
from enclave.gateway.models.base import ChatMessage
from enclave.gateway.prompts.context import detect_language
from enclave.gateway.prompts.postprocess import GenerationStreamFilter, postprocess_generation
from enclave.gateway.prompts.registry import get_registry
from enclave.gateway.targets import ModelTarget, target_request

PROMPT_ID: Final = "code_suggestions/generations"
# The file around the cursor that goes into the gateway's own instruction.
MAX_PREFIX_CHARS: Final = 16000
MAX_SUFFIX_CHARS: Final = 8000


def plan_generation(payload: SuggestionsBody, target: ModelTarget) -> Plan:
    family = (payload.model_name or FAMILY_GENERAL).strip().lower() or FAMILY_GENERAL
    current = payload.current_file
    lang = detect_language(current.language_identifier, current.file_name)
    definition = get_registry().resolve(PROMPT_ID, family)
    params = definition.params

    messages: tuple[ChatMessage, ...]
    if payload.prompt_version == 3 and isinstance(payload.prompt, list):
        messages = messages_from(payload.prompt)
    elif isinstance(payload.prompt, str) and payload.prompt:
        messages = (ChatMessage("user", payload.prompt),)
    else:
        rendered = definition.render(
            {
                "prefix": current.content_above_cursor[-MAX_PREFIX_CHARS:],
                "suffix": current.content_below_cursor[:MAX_SUFFIX_CHARS],
                "file_name": current.file_name,
                "language": lang or "",
            }
        )
        messages = rendered.messages

    request = target_request(target, messages, None, params, family=family, prompt_id=PROMPT_ID)
    return Plan(
        request=request,
        model_name=f"custom_openai/{family}",
        lang=lang,
        postprocess=postprocess_generation,
        stream_filter=GenerationStreamFilter,
    )


GENERATIONS = UseCase(
    name="code generations",
    feature=Feature.CODE_GENERATIONS,
    scopes=(wire.UP_GENERATE_CODE, wire.UP_CODE_SUGGESTIONS),
    plan=plan_generation,
)

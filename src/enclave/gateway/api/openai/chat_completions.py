"""``POST /v1/chat/completions``: OpenAI chat completions, served by a feature's model.

``model`` names the feature; without one the request goes to ``duo_chat`` (general chat), the
feature a chat client means when it does not pick one. The feature's model answers through the
gateway's model chain (:mod:`.common`): OpenAI-compatible servers get the body as the client
sent it, with ``model`` replaced by the name the model server expects; Anthropic, Bedrock and
Vertex AI models get its equivalent in their own API.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from enclave.common.features import Feature
from enclave.gateway.answers import JsonAnswer
from enclave.gateway.api.openai.common import (
    Call,
    OpenAIStreamResponse,
    RequestError,
    authenticate,
    check_common,
    check_messages,
    forward,
    read_json_object,
    select_route,
)
from enclave.gateway.api.openai.tools import check_tools

DEFAULT_MODEL = Feature.DUO_CHAT.value


async def chat_completions(request: Request) -> Response | JsonAnswer | OpenAIStreamResponse:
    try:
        principal, routes = await authenticate(request)
        body = await read_json_object(request)
        model, stream = check_common(body, DEFAULT_MODEL)
        route = select_route(principal, routes, model)
        check_messages(body)
        tools = check_tools(body)
        return await forward(request, Call(route, "chat", body, stream, tools))
    except RequestError as exc:
        return exc.response()

"""``POST /v1/completions``: OpenAI (legacy) text completions, served by a feature's model.

``model`` names the feature; without one the request goes to ``code_completions``, the feature
raw-prompt (fill-in-the-middle) clients such as Continue's autocomplete mean. The prompt is sent
as the client built it.
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
    check_prompt,
    forward,
    read_json_object,
    select_route,
)

DEFAULT_MODEL = Feature.CODE_COMPLETIONS.value


async def completions(request: Request) -> Response | JsonAnswer | OpenAIStreamResponse:
    try:
        principal, routes = await authenticate(request)
        body = await read_json_object(request)
        model, stream = check_common(body, DEFAULT_MODEL)
        route = select_route(principal, routes, model)
        check_prompt(body)
        return await forward(request, Call(route, "completions", body, stream))
    except RequestError as exc:
        return exc.response()

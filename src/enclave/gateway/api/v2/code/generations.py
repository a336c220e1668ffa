"""``POST /v2/code/generations``.

The use case (the generation prompt for the family, fences stripped from the answer) is
:data:`enclave.gateway.code_suggestions.generations.GENERATIONS`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from enclave.gateway.answers import JsonAnswer
from enclave.gateway.code_suggestions.generations import GENERATIONS
from enclave.gateway.code_suggestions.pipeline import serve
from enclave.gateway.streaming import RawTextStreamResponse


async def generations(request: Request) -> Response | JsonAnswer | RawTextStreamResponse:
    return await serve(request, GENERATIONS)

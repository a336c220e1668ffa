"""``POST /v2/code/completions`` (and the legacy alias ``/v2/completions``).

The use case (prompt versions 1–3, FIM vs chat families, clean-up of the answer) is
:data:`enclave.gateway.code_suggestions.completions.COMPLETIONS`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from enclave.gateway.answers import JsonAnswer
from enclave.gateway.code_suggestions.completions import COMPLETIONS
from enclave.gateway.code_suggestions.pipeline import serve
from enclave.gateway.streaming import RawTextStreamResponse


async def completions(request: Request) -> Response | JsonAnswer | RawTextStreamResponse:
    return await serve(request, COMPLETIONS)

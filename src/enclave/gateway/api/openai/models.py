"""``GET /v1/models`` and ``GET /v1/models/{model}``: the features this token may use now.

OpenAI's list format; each model is an AI feature that a self-hosted model serves and whose unit
primitive the token holds, with Enclave's extra fields ``family`` (the model family),
``model_name`` (the model record's name on the instance) and ``unit_primitive``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from enclave.gateway.api.openai.common import RequestError, authenticate, usable_routes
from enclave.gateway.http import json_response
from enclave.gateway.routes_table import FeatureRoute

OWNED_BY = "enclave"


def model_object(route: FeatureRoute) -> dict[str, Any]:
    return {
        "id": route.feature,
        "object": "model",
        "created": 0,
        "owned_by": OWNED_BY,
        "family": route.family,
        "model_name": route.model_name,
        "unit_primitive": route.unit_primitive,
    }


async def list_models(request: Request) -> Response:
    try:
        principal, routes = await authenticate(request)
    except RequestError as exc:
        return exc.response()
    data = [model_object(route) for route in usable_routes(principal, routes)]
    return json_response({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    try:
        principal, routes = await authenticate(request)
    except RequestError as exc:
        return exc.response()
    model = request.path_params["model"]
    for route in usable_routes(principal, routes):
        if route.feature == model:
            return json_response(model_object(route))
    return RequestError(
        404,
        f"The model '{model}' does not exist or this token may not use it",
        "model_not_found",
        "model",
    ).response()

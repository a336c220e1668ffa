"""The gateway's OpenAPI document (``/openapi.json``) and its docs page (``/docs``).

GitLab's AI gateway image serves both; clients, the API fuzzer and operators read them. The
gateway's endpoints are plain Starlette routes (no FastAPI), so the document is built here from
the route table and one :class:`Operation` per endpoint: its summary, who may call it and the
pydantic model its body is validated against. A route without an entry is still listed
(``tests/unit/gateway/test_gateway_openapi.py`` fails until it gets one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from enclave import __version__
from enclave.common import wire
from enclave.common.api_docs import DOCS_CSP, render_docs_page
from enclave.gateway.api.openai import chat_completions as openai_chat
from enclave.gateway.api.openai import completions as openai_completions
from enclave.gateway.api.openai import models as openai_models
from enclave.gateway.api.v1.chat.invoke import ChatRequest, chat
from enclave.gateway.api.v1.code.user_access_token import user_access_token
from enclave.gateway.api.v1.models.definitions import definitions
from enclave.gateway.api.v1.prompts.invoke import PromptRequest, invoke
from enclave.gateway.api.v2.chat.agent import AgentRequest, agent
from enclave.gateway.api.v2.code.completions import completions
from enclave.gateway.api.v2.code.generations import generations
from enclave.gateway.api.v4.code.suggestions import V4SuggestionsRequest, suggestions
from enclave.gateway.code_suggestions.schemas import SuggestionsRequest
from enclave.gateway.http import json_response

# Who may call an endpoint: the instance's JWT with GitLab's headers, a token for the
# OpenAI-compatible API, either (code completions take users' direct-access tokens), or anyone
# the client address allow-list admits.
INSTANCE: Final = "instance"
OPENAI: Final = "openai"
NONE: Final = "none"

# What the OpenAI-compatible endpoints check by hand (api/openai/common.py); other OpenAI
# fields pass through to OpenAI-compatible servers, so the objects stay open.
_OPENAI_MESSAGE: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]},
    },
}
_OPENAI_COMMON: Final[dict[str, Any]] = {
    "model": {"type": "string", "description": "A feature name from GET /v1/models"},
    "stream": {"type": "boolean"},
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
}
OPENAI_CHAT_BODY: Final[dict[str, Any]] = {
    "title": "OpenAIChatCompletionRequest",
    "type": "object",
    "required": ["messages"],
    "properties": {**_OPENAI_COMMON, "messages": {"type": "array", "items": _OPENAI_MESSAGE}},
}
OPENAI_COMPLETION_BODY: Final[dict[str, Any]] = {
    "title": "OpenAICompletionRequest",
    "type": "object",
    "required": ["prompt"],
    "properties": {
        **_OPENAI_COMMON,
        "prompt": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    },
}

Body = type[BaseModel] | dict[str, Any] | None


@dataclass(frozen=True)
class Operation:
    summary: str
    auth: str
    body: Body = None


OPERATIONS: Final[dict[Callable[..., Any], Operation]] = {
    completions: Operation(
        "Code completion (GitLab 17 instances; a user's direct-access token also works)",
        INSTANCE,
        SuggestionsRequest,
    ),
    generations: Operation("Code generation (GitLab 17 instances)", INSTANCE, SuggestionsRequest),
    suggestions: Operation(
        "Code completion and generation as prompt components (GitLab 18 instances)",
        INSTANCE,
        V4SuggestionsRequest,
    ),
    agent: Operation(
        "Duo Chat: an answer to a conversation, streamed as ndjson", INSTANCE, AgentRequest
    ),
    chat: Operation(
        "A chat tool (explain_code, write_tests, ...) by its invokable name", INSTANCE, ChatRequest
    ),
    invoke: Operation(
        "A prompt of the registry by its id, e.g. chat/explain_code", INSTANCE, PromptRequest
    ),
    user_access_token: Operation(
        "A short-lived token for a user's direct access to code completions", INSTANCE
    ),
    definitions: Operation("The model families and providers this gateway serves", NONE),
    openai_chat.chat_completions: Operation(
        "OpenAI-compatible chat completions (model = a feature name)", OPENAI, OPENAI_CHAT_BODY
    ),
    openai_completions.completions: Operation(
        "OpenAI-compatible text completions (model = a feature name)",
        OPENAI,
        OPENAI_COMPLETION_BODY,
    ),
    openai_models.list_models: Operation(
        "The features this token may use, as OpenAI models", OPENAI
    ),
    openai_models.retrieve_model: Operation("One feature, as an OpenAI model", OPENAI),
}

# Endpoints defined outside the API packages (monitoring, metrics, the docs themselves) are
# named by path: they take no token.
PUBLIC_SUMMARIES: Final = {
    "/monitoring/healthz": "Liveness: the process answers",
    "/monitoring/ready": "Readiness: issuer keys loaded, model reachable",
    "/metrics": "Prometheus metrics",
    "/openapi.json": "This document",
    "/docs": "This document as a page (no external scripts or styles)",
}

_GITLAB_HEADERS: Final = (
    (wire.H_AUTH_TYPE, "oidc"),
    (wire.H_INSTANCE_ID, "The instance's id, as in the token"),
    (wire.H_REALM, "self-managed"),
    (wire.H_GLOBAL_USER_ID, "The user on whose behalf the instance calls"),
)


def _openapi_path(route: Route) -> str:
    # Starlette's "{prompt_id:path}" is OpenAPI's "{prompt_id}".
    path = route.path
    for name in route.param_convertors:
        path = path.replace(f"{{{name}:path}}", f"{{{name}}}")
    return path


def _parameters(route: Route, auth: str) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in route.param_convertors
    ]
    if auth == INSTANCE:
        parameters += [
            {
                "name": header,
                "in": "header",
                "required": False,
                "description": text,
                "schema": {"type": "string"},
            }
            for header, text in _GITLAB_HEADERS
        ]
    return parameters


def _body_schemas(models: Iterable[type[BaseModel]]) -> tuple[dict[Any, Any], dict[str, Any]]:
    """Each body model's schema (a reference) and the components they share.

    Built in one pass so that two models with the same name in different modules (the chat
    agent's ``CurrentFile`` and code suggestions' ``CurrentFile``) get distinct components.
    """
    unique = list(dict.fromkeys(models))
    refs, schema = models_json_schema(
        [(model, "validation") for model in unique],
        ref_template="#/components/schemas/{model}",
    )
    return {model: refs[(model, "validation")] for model in unique}, schema.get("$defs", {})


_ERROR: Final = {"description": "Refused: the body says why (detail, error or message)"}


def _operation(route: Route, method: str, bodies: dict[Any, Any]) -> dict[str, Any]:
    known = OPERATIONS.get(route.endpoint)
    summary = known.summary if known else PUBLIC_SUMMARIES.get(route.path, route.path)
    auth = known.auth if known else NONE
    operation: dict[str, Any] = {
        "operationId": f"{method}_{route.name}_{_openapi_path(route)}",
        "summary": summary,
        "parameters": _parameters(route, auth),
        "responses": {"200": {"description": "Success"}, "4XX": _ERROR, "5XX": _ERROR},
    }
    if auth != NONE:
        operation["security"] = [{"bearer": []}]
        operation["responses"]["401"] = {"description": "Missing, invalid or revoked token"}
    if known is not None and known.body is not None and method == "post":
        # Hand-written schemas (OpenAI's API) are inline; models are components.
        schema = known.body if isinstance(known.body, dict) else bodies[known.body]
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
        operation["responses"]["422"] = {
            "description": "The body failed validation (detail says where)"
        }
    return operation


def build_document(routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document listing every route in ``routes`` with every method."""
    routes = list(routes)
    known = [OPERATIONS[r.endpoint].body for r in routes if r.endpoint in OPERATIONS]
    bodies, components = _body_schemas(b for b in known if isinstance(b, type))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        methods = sorted(m.lower() for m in (route.methods or ()) if m != "HEAD")
        item = paths.setdefault(_openapi_path(route), {})
        for method in methods:
            item[method] = _operation(route, method, bodies)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Enclave AI gateway",
            "version": __version__,
            "description": "GitLab AI gateway API (GitLab 17 and 18 instances) and an "
            "OpenAI-compatible API, on self-hosted models.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def document_routes(routes: Sequence[Route]) -> tuple[Route, Route]:
    """``/openapi.json`` and ``/docs`` for the app serving ``routes`` (both listed too)."""
    document: dict[str, Any] = {}
    page: list[str] = []

    async def openapi_json(request: Request) -> Response:
        return json_response(document)

    async def docs(request: Request) -> Response:
        return HTMLResponse(page[0], headers={"Content-Security-Policy": DOCS_CSP})

    own = (
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    )
    # Built once, with the two routes themselves listed.
    document.update(build_document([*routes, *own]))
    page.append(render_docs_page(document))
    return own

"""``POST /api/graphql``: the GraphQL GitLab's editor extensions query, answered from Enclave's
real state (schema and limits in ``graphql_schema.py``).

* Authentication as the REST API: a personal access token in ``PRIVATE-TOKEN`` or
  ``Authorization: Bearer``, any scope; 401 without a valid one (before the body is read).
  What the token may do is then per field: AI availability and ``aiAction`` need ``api`` or
  ``ai_features``, as every AI endpoint.
* ``currentUser``: the caller, with ids as GitLab global ids (``gid://gitlab/User/N``) and Duo
  availability from the feature settings and the token's scopes (``duo_availability.py``).
* ``featureFlagEnabled(name)`` / ``metadata { featureFlags(names) }``: Enclave has no feature
  flags. Every flag is off except :data:`ENABLED_FLAGS`, the instance flags GitLab's Language
  Server reads before it uses a feature Enclave does serve: ``advanced_context_resolver`` and
  ``code_suggestions_context`` (it then sends open tabs and imports as ``context`` with code
  suggestions, which Enclave forwards) and ``duo_additional_context`` (chat with additional
  context items, which Enclave's chat honours). Flags for what Enclave lacks (Duo Workflow,
  model switching, context exclusion, flow registry) stay off, so the clients hide those.
* ``project(fullPath) { duoFeaturesEnabled }``: Enclave has no projects; every path stands for
  the instance, enabled when the caller can use code suggestions or chat.
* ``aiAction(input: {chat: ...})`` (``/clear``, ``/reset``, ``/new`` manage the conversation
  and reach no model): the same checks and gateway call as
  ``POST /api/v4/chat/completions`` (``chat.prepare_chat`` / ``chat.ask_gateway``: chat limit,
  slash commands, feature setting, model); refusals are GraphQL errors. It answers at once with
  the ``requestId``; the question and, when the model has answered, the answer (or the chat
  error, with GitLab's error code, in ``errors``) are then read with ``aiMessages``.

A resolver's unexpected exception becomes "Internal server error" (logged with its cause), so
no internal detail reaches the client.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from graphql import (
    ExecutionResult,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    execute,
    parse,
    specified_rules,
    validate,
)
from graphql.pyutils import is_awaitable
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from enclave.common.logging import get_logger
from enclave.instance import ai_settings
from enclave.instance.api import chat
from enclave.instance.api.code_suggestions import read_json_body
from enclave.instance.api.deps import authenticated, context_of, in_transaction
from enclave.instance.api.editors import metadata_view
from enclave.instance.api.errors import InstanceAPIError
from enclave.instance.api.middleware import USAGE_DEFERRED, annotate
from enclave.instance.api.relay import UpstreamStreamError
from enclave.instance.api.routing import InstanceRoute
from enclave.instance.chat_events import ChatEvents
from enclave.instance.chat_history import ChatMessage, Role
from enclave.instance.context import InstanceContext
from enclave.instance.duo_availability import DuoAvailability, availability, may_use_ai
from enclave.instance.graphql_schema import MAX_TOKENS, SCHEMA, QueryLimits
from enclave.instance.pats import KNOWN_SCOPES, Principal
from enclave.instance.usage import record_request

log = get_logger(__name__)


class GraphQLRoute(InstanceRoute):
    """GraphQL documents and their variables: at most 1 MiB, read after authentication."""

    fixed_limit = 1024 * 1024


router = APIRouter(tags=["graphql"], route_class=GraphQLRoute)

PATH: Final = "/api/graphql"
# A question (100 000 characters) with its file and a few context items fits.
ENABLED_FLAGS: Final = frozenset(
    {"advanced_context_resolver", "code_suggestions_context", "duo_additional_context"}
)
# GitLab's message when the caller may not do something (Gitlab::Graphql::Errors).
NOT_AVAILABLE: Final = (
    "The resource that you are attempting to access does not exist or you don't have "
    "permission to perform this action"
)
INTERNAL_ERROR: Final = "Internal server error"
# Chat inputs that manage the conversation (GitLab's clients send them): /clear forgets the
# user's messages; /reset and /new start a new conversation, which for Enclave's chat (every
# question stands alone) is only a marker in the history.
CONVERSATION_COMMANDS: Final = frozenset({"/clear", "/reset", "/new"})
RULES: Final = (*specified_rules, QueryLimits)

AnyTokenUser = Annotated[Principal, Depends(authenticated(KNOWN_SCOPES))]

# Answers being generated: referenced here so the event loop does not drop them mid-way.
_running: set[asyncio.Task[None]] = set()


def user_gid(user_id: int) -> str:
    return f"gid://gitlab/User/{user_id}"


@dataclass
class Resolution:
    """What every resolver of one request sees (graphql-core's ``context_value``)."""

    request: Request
    principal: Principal
    ctx: InstanceContext
    _availability: DuoAvailability | None = field(default=None, init=False)

    async def availability(self) -> DuoAvailability:
        if self._availability is None:
            self._availability = await run_in_threadpool(
                in_transaction,
                self.ctx,
                lambda s: availability(
                    s,
                    self.principal,
                    ai_settings.effective(s, self.ctx.settings).vendored_ai_gateway_url is not None,
                ),
            )
        return self._availability


def _resolution(info: Any) -> Resolution:
    context: Resolution = info.context
    return context


def _message_view(message: ChatMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "requestId": message.request_id,
        "role": message.role.upper(),
        "content": message.content,
        # GitLab renders Markdown to HTML on the server; Enclave leaves it to the client,
        # which renders ``content`` itself when this is null.
        "contentHtml": None,
        "timestamp": message.timestamp.isoformat().replace("+00:00", "Z"),
        "errors": list(message.errors),
        "type": None,
        "chunkId": None,
        "threadId": None,
        "extras": {
            "sources": [],
            "hasFeedback": False,
            "additionalContext": list(message.additional_context),
        },
    }


def _context_item(item: dict[str, Any]) -> dict[str, Any]:
    # GraphQL's AiAdditionalContextInput as the REST chat's additional_context item.
    return {"type": str(item["category"]).lower(), "name": item["id"], "content": item["content"]}


def _context_items(chat_input: dict[str, Any], action: dict[str, Any]) -> list[dict[str, Any]]:
    # In the chat input (current clients) or the action input (older ones).
    return [*(chat_input.get("additionalContext") or []), *(action.get("additionalContext") or [])]


def _context_echo(chat_input: dict[str, Any], action: dict[str, Any]) -> list[dict[str, Any]]:
    """The question's context items as the clients read them back (``extras``), without their
    content: the model has it, the client still has it, the history need not keep it."""
    return [
        {
            "id": item["id"],
            "category": item["category"],
            "content": None,
            "metadata": item.get("metadata"),
        }
        for item in _context_items(chat_input, action)
    ]


def chat_request(chat_input: dict[str, Any], action: dict[str, Any]) -> chat.ChatRequest:
    """The REST chat's request for an ``aiAction`` chat input (context items from the chat
    input and, as older clients send them, from the action input)."""
    items = _context_items(chat_input, action)
    current = chat_input.get("currentFile")
    return chat.ChatRequest.model_validate(
        {
            "content": chat_input["content"],
            "additional_context": [_context_item(item) for item in items] or None,
            "current_file": (
                {
                    "file_name": current["fileName"],
                    "selected_text": current["selectedText"],
                    "content_above_cursor": current.get("contentAboveCursor"),
                    "content_below_cursor": current.get("contentBelowCursor"),
                }
                if current
                else None
            ),
            "resource_id": chat_input.get("resourceId"),
        }
    )


def _chunk_view(request_id: str, content: str, chunk_id: int) -> dict[str, Any]:
    return {
        "id": None,
        "requestId": request_id,
        "role": "ASSISTANT",
        "content": content,
        "contentHtml": None,
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "errors": [],
        "type": None,
        "chunkId": chunk_id,
        "threadId": None,
        "extras": None,
    }


async def _collect(
    response: Any, events: ChatEvents, user_id: int, subscription: str | None, request_id: str
) -> str:
    """The streamed answer, each piece pushed to the subscription as a numbered chunk."""
    assert isinstance(response, StreamingResponse)
    chunks = response.body_iterator
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    parts: list[str] = []
    try:
        async for raw in chunks:
            text = decoder.decode(raw if isinstance(raw, bytes) else str(raw).encode())
            if text:
                parts.append(text)
                chunk = _chunk_view(request_id, text, len(parts))
                events.publish(user_id, subscription, chunk, final=False)
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()  # the gateway connection goes back, or is dropped when broken
    parts.append(decoder.decode(b"", final=True))
    return "".join(parts)


def _failed(code: str, text: str) -> str:
    return f"{text} Error code: {code}"


async def _answer(
    request: Request,
    principal: Principal,
    call: chat.ChatCall,
    ctx: InstanceContext,
    request_id: str,
    subscription: str | None,
) -> None:
    """Get the answer, keep it for ``aiMessages`` and push it to subscribers (streamed in
    chunks when the editor subscribed for this chat); failures become the answer's errors."""
    history, events, user_id = ctx.chat_history, ctx.chat_events, principal.user_id
    started = time.perf_counter()
    stream = subscription is not None and events.listening(user_id, subscription)
    error: str | None = None
    answer = ""
    try:
        result = await chat.ask_gateway(request, principal, call, stream=stream)
        if stream:
            answer = await _collect(result, events, user_id, subscription, request_id)
        else:
            answer = str(result)
        if not answer.strip():
            error = _failed(
                chat.A1002_NO_ANSWER,
                "The AI gateway answered without a usable response. Try again; if it keeps "
                "happening, ask an administrator to check the gateway logs and the model.",
            )
    except InstanceAPIError as exc:  # ChatError: GitLab's error code is in the message
        error = exc.message
    except UpstreamStreamError:
        error = _failed(
            chat.A1003_MODEL,
            "The answer broke off while the AI gateway was sending it. Try again; if it keeps "
            "happening, ask an administrator to check the gateway and model server logs.",
        )
    except Exception:
        log.exception("editor_chat_failed")
        error = _failed(chat.A9999_UNKNOWN, f"{INTERNAL_ERROR}.")
    # The request's middleware skipped it (USAGE_DEFERRED): the answer ends only now.
    record_request(
        ctx.usage,
        request.scope.get("state", {}),
        status=502 if error is not None else 200,
        seconds=time.perf_counter() - started,
    )
    if error is not None:
        message = history.add(user_id, request_id, "assistant", error, errors=[error])
    else:
        message = history.add(user_id, request_id, "assistant", answer)
    events.publish(user_id, subscription, _message_view(message), final=True)


class Root:
    """The root value: one method per top-level field (graphql-core's default resolver calls
    them with ``info`` and the field's arguments, named as in the schema)."""

    async def currentUser(self, info: Any) -> dict[str, Any]:
        resolution = _resolution(info)
        principal = resolution.principal
        duo = await resolution.availability()
        return {
            "id": user_gid(principal.user_id),
            "username": principal.username,
            "name": principal.name,
            "publicEmail": None,
            "webUrl": f"{resolution.ctx.issuer.rstrip('/')}/{principal.username}",
            "duoCodeSuggestionsAvailable": duo.code_suggestions,
            "duoChatAvailable": duo.chat,
            "duoChatAvailableFeatures": list(duo.chat_features),
            "codeSuggestionsContexts": list(duo.code_suggestions_contexts),
        }

    def featureFlagEnabled(self, info: Any, name: str) -> bool:
        return name in ENABLED_FLAGS

    def metadata(self, info: Any) -> dict[str, Any]:
        view = metadata_view()

        def feature_flags(info: Any, names: list[str]) -> list[dict[str, Any]]:
            return [{"name": name, "enabled": name in ENABLED_FLAGS} for name in names]

        return {**view, "featureFlags": feature_flags}

    async def project(self, info: Any, fullPath: str) -> dict[str, Any]:
        duo = await _resolution(info).availability()
        return {"id": "gid://gitlab/Project/0", "fullPath": fullPath, "duoFeaturesEnabled": duo.any}

    def aiMessages(
        self,
        info: Any,
        requestIds: list[str] | None = None,
        roles: list[str] | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        resolution = _resolution(info)
        wanted: list[Role] | None = None
        if roles is not None:
            # SYSTEM messages are never kept, so asking only for them finds nothing.
            wanted = [r for r in ("user", "assistant") if r.upper() in roles]
        messages = resolution.ctx.chat_history.messages(
            resolution.principal.user_id, request_ids=requestIds, roles=wanted
        )
        return {
            "nodes": [_message_view(m) for m in messages],
            "pageInfo": {
                "hasNextPage": False,
                "hasPreviousPage": False,
                "startCursor": None,
                "endCursor": None,
            },
        }

    async def aiAction(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        resolution = _resolution(info)
        principal, request = resolution.principal, resolution.request
        if not may_use_ai(principal):
            raise GraphQLError(NOT_AVAILABLE)
        chat_input = input.get("chat")
        if chat_input is None:
            raise GraphQLError("Only the chat action is available on this instance: send chat.")
        history = resolution.ctx.chat_history
        special = str(chat_input.get("content", "")).strip().lower()
        if special in CONVERSATION_COMMANDS:
            # GitLab's clients send these to manage the conversation, not to ask the model.
            request_id = history.new_request_id()
            if special == "/clear":
                history.clear(principal.user_id)
            else:
                history.add(principal.user_id, request_id, "user", special)
            return {
                "clientMutationId": input.get("clientMutationId"),
                "requestId": request_id,
                "threadId": None,
                "errors": [],
            }
        try:
            body = chat_request(chat_input, input)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise GraphQLError(
                f"chat.{where} is invalid: {first.get('msg', 'bad value')}"
            ) from None
        try:
            call = await chat.prepare_chat(request, principal, body)
        except InstanceAPIError as exc:
            raise GraphQLError(exc.message, extensions={"status": exc.status}) from None
        request_id = history.new_request_id()
        annotate(request, ai_request_id=request_id)
        request.scope.setdefault("state", {})[USAGE_DEFERRED] = True
        history.add(
            principal.user_id,
            request_id,
            "user",
            body.content,
            additional_context=_context_echo(chat_input, input),
        )
        subscription = input.get("clientSubscriptionId")
        task = asyncio.create_task(
            _answer(request, principal, call, resolution.ctx, request_id, subscription)
        )
        _running.add(task)
        task.add_done_callback(_running.discard)
        return {
            "clientMutationId": input.get("clientMutationId"),
            "requestId": request_id,
            "threadId": None,
            "errors": [],
        }


ROOT: Final = Root()


def _errors_only(*errors: GraphQLError) -> JSONResponse:
    return JSONResponse({"errors": [error.formatted for error in errors]})


def _formatted(result: ExecutionResult) -> dict[str, Any]:
    """The result, with the text of unexpected exceptions replaced (they are logged)."""
    errors = []
    for error in result.errors or ():
        original = error.original_error
        if original is not None and not isinstance(original, GraphQLError):
            log.error(
                "graphql_resolver_failed",
                path=error.path,
                error=type(original).__name__,
                exc_info=original,
            )
            error = GraphQLError(INTERNAL_ERROR, error.nodes, path=error.path)
        errors.append(error.formatted)
    data: dict[str, Any] = {"data": result.data}
    if errors:
        data["errors"] = errors
    return data


@router.post(PATH, summary="GraphQL (the part of GitLab's schema editors use)")
async def graphql_endpoint(request: Request, principal: AnyTokenUser) -> JSONResponse:
    body = await read_json_body(request, empty_hint='send {"query": ..., "variables": {...}}')
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        return _errors_only(GraphQLError("No query string was present"))
    variables = body.get("variables")
    if isinstance(variables, str):  # some clients send them as a JSON string
        try:
            variables = orjson.loads(variables) if variables.strip() else None
        except orjson.JSONDecodeError:
            return _errors_only(GraphQLError("variables is not valid JSON"))
    if variables is not None and not isinstance(variables, dict):
        return _errors_only(GraphQLError("variables must be a JSON object"))
    operation_name = body.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        return _errors_only(GraphQLError("operationName must be a string"))
    try:
        document = parse(query, max_tokens=MAX_TOKENS)
    except GraphQLError as error:
        return _errors_only(error)
    errors = validate(SCHEMA, document, RULES)
    if errors:
        return _errors_only(*errors)
    for definition in document.definitions:
        if (
            isinstance(definition, OperationDefinitionNode)
            and definition.operation == OperationType.SUBSCRIPTION
            and (
                operation_name is None or operation_name == getattr(definition.name, "value", None)
            )
        ):
            return _errors_only(
                GraphQLError("Subscriptions are served over ActionCable (/-/cable), not HTTP")
            )
    resolution = Resolution(request, principal, context_of(request))
    outcome = execute(
        SCHEMA,
        document,
        root_value=ROOT,
        context_value=resolution,
        variable_values=variables,
        operation_name=operation_name,
    )
    if is_awaitable(outcome):
        assert isinstance(outcome, Awaitable)
        outcome = await outcome
    assert isinstance(outcome, ExecutionResult)
    return JSONResponse(_formatted(outcome))

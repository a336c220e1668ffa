"""``/-/cable``: GitLab's ActionCable WebSocket, for editors' streamed chat answers.

The ``actioncable-v1-json`` protocol as GitLab's editors speak it:

* the connection carries a personal access token (``Authorization: Bearer`` or
  ``PRIVATE-TOKEN``) with ``api`` or ``ai_features``; without one the upgrade is refused (403),
  and a banned address is refused as for every authenticated request;
* the server says ``{"type": "welcome"}``, then ``{"type": "ping", "message": <unix time>}``
  every :data:`PING_INTERVAL_S`;
* ``{"command": "subscribe", "identifier": "{\\"channel\\": \\"GraphqlChannel\\", \\"query\\":
  ..., \\"variables\\": ..., \\"operationName\\": ...}"}`` runs the GraphQL subscription
  (graphql-core's ``subscribe``, the schema and limits of ``/api/graphql``): confirmed with
  ``confirm_subscription``, refused with ``reject_subscription``; each event is sent as
  ``{"identifier", "message": {"result": {"data": ...}, "more": true}}``;
* ``{"command": "unsubscribe", "identifier"}`` ends it.

``aiCompletionResponse(userId, aiAction: CHAT, clientSubscriptionId)`` delivers the caller's
own chat answers only (another user's ``userId`` is refused): the chunks of the chat whose
``aiAction`` named this ``clientSubscriptionId`` (``chunkId`` 1, 2, …), then its final message.
Bounded: :data:`MAX_SUBSCRIPTIONS` per connection, :data:`MAX_FRAME_CHARS` per client frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Final, cast

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from graphql import (
    ExecutionResult,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    parse,
    subscribe,
    validate,
)
from graphql.pyutils import is_awaitable
from starlette.concurrency import run_in_threadpool

from enclave.common.logging import get_logger
from enclave.instance.api.deps import context_of
from enclave.instance.api.errors import InstanceAPIError
from enclave.instance.api.graphql_endpoint import NOT_AVAILABLE, RULES, user_gid
from enclave.instance.chat_events import TooManyListenersError
from enclave.instance.context import InstanceContext
from enclave.instance.graphql_schema import MAX_TOKENS, SCHEMA
from enclave.instance.pats import (
    AI_SCOPES,
    AuthError,
    InsufficientScopeError,
    Principal,
    authenticate_request,
    token_from_headers,
)

log = get_logger(__name__)

router = APIRouter()

PATH: Final = "/-/cable"
PROTOCOL: Final = "actioncable-v1-json"
CHANNEL: Final = "GraphqlChannel"
PING_INTERVAL_S: Final = 3.0
MAX_SUBSCRIPTIONS: Final = 20
MAX_FRAME_CHARS: Final = 64 * 1024


class CableContext:
    """graphql-core's ``context_value`` for a subscription."""

    def __init__(self, principal: Principal, ctx: InstanceContext) -> None:
        self.principal = principal
        self.ctx = ctx


def _subscribe_ai_completion(
    root: Any,
    info: Any,
    userId: str | None = None,
    clientSubscriptionId: str | None = None,
    **_: Any,
) -> AsyncIterator[dict[str, Any]]:
    context: CableContext = info.context
    principal = context.principal
    if userId is not None and userId != user_gid(principal.user_id):
        raise GraphQLError(NOT_AVAILABLE)  # only one's own answers
    try:
        return context.ctx.chat_events.listen(principal.user_id, clientSubscriptionId)
    except TooManyListenersError as exc:
        raise GraphQLError(str(exc)) from None


def _install_resolvers() -> None:
    assert SCHEMA.subscription_type is not None
    field = SCHEMA.subscription_type.fields["aiCompletionResponse"]
    field.subscribe = _subscribe_ai_completion
    field.resolve = lambda event, info, **_: event  # the event is the message itself


_install_resolvers()


async def _authenticate(websocket: WebSocket, ctx: InstanceContext) -> Principal | None:
    address = websocket.client.host if websocket.client else None
    try:
        ctx.limits.check_address(address)
    except InstanceAPIError:
        return None
    token = token_from_headers(
        websocket.headers.get("private-token"), websocket.headers.get("authorization")
    )
    try:
        return await run_in_threadpool(
            authenticate_request, ctx.sessions, token, accepted_scopes=AI_SCOPES
        )
    except AuthError as exc:
        log.info("cable_authentication_failed", reason=exc.reason)
        ctx.limits.auth_failed(address, exc.reason)
    except InsufficientScopeError:
        log.info("cable_insufficient_scope")
    return None


class Connection:
    def __init__(self, websocket: WebSocket, principal: Principal, ctx: InstanceContext):
        self.websocket = websocket
        self.principal = principal
        self.ctx = ctx
        self.subscriptions: dict[str, asyncio.Task[None]] = {}
        self._send_lock = asyncio.Lock()

    async def send(self, payload: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.websocket.send_text(orjson.dumps(payload).decode())

    async def ping(self) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            await self.send({"type": "ping", "message": int(time.time())})

    async def handle(self, frame: str) -> None:
        if len(frame) > MAX_FRAME_CHARS:
            log.info("cable_frame_too_large", chars=len(frame))
            return
        try:
            data = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict) or not isinstance(data.get("identifier"), str):
            return
        identifier: str = data["identifier"]
        command = data.get("command")
        if command == "subscribe":
            await self.subscribe(identifier)
        elif command == "unsubscribe":
            task = self.subscriptions.pop(identifier, None)
            if task is not None:
                task.cancel()

    async def subscribe(self, identifier: str) -> None:
        if identifier in self.subscriptions:
            return  # ActionCable ignores a repeated subscribe
        result = (
            await self._start(identifier) if len(self.subscriptions) < MAX_SUBSCRIPTIONS else None
        )
        if result is None:
            await self.send({"identifier": identifier, "type": "reject_subscription"})
            return
        self.subscriptions[identifier] = asyncio.create_task(self._relay(identifier, result))
        await self.send({"identifier": identifier, "type": "confirm_subscription"})

    async def _start(self, identifier: str) -> AsyncIterator[ExecutionResult] | None:
        """The subscription's event stream, or None when it is refused (logged)."""
        try:
            channel = orjson.loads(identifier)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(channel, dict) or channel.get("channel") != CHANNEL:
            return None
        query, variables = channel.get("query"), channel.get("variables") or {}
        if isinstance(variables, str):  # GitLab's clients send them JSON-encoded
            try:
                variables = orjson.loads(variables)
            except orjson.JSONDecodeError:
                return None
        if not isinstance(query, str) or not isinstance(variables, dict):
            return None
        operation_name = channel.get("operationName")
        try:
            document = parse(query, max_tokens=MAX_TOKENS)
        except GraphQLError as error:
            log.info("cable_subscription_refused", error=error.message)
            return None
        errors = validate(SCHEMA, document, RULES)
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        if errors or any(op.operation != OperationType.SUBSCRIPTION for op in operations):
            log.info("cable_subscription_refused", errors=[e.message for e in errors])
            return None
        outcome = subscribe(
            SCHEMA,
            document,
            context_value=CableContext(self.principal, self.ctx),
            variable_values=variables,
            operation_name=operation_name if isinstance(operation_name, str) else None,
        )
        if is_awaitable(outcome):
            outcome = await outcome
        if isinstance(outcome, ExecutionResult):  # refused by the resolver or the variables
            log.info("cable_subscription_refused", errors=[e.message for e in outcome.errors or ()])
            return None
        # is_awaitable does not narrow for mypy: what is left is the subscription's stream.
        return cast(AsyncIterator[ExecutionResult], outcome)

    async def _relay(self, identifier: str, results: AsyncIterator[ExecutionResult]) -> None:
        try:
            async for result in results:
                message: dict[str, Any] = {"data": result.data}
                if result.errors:
                    message["errors"] = [error.formatted for error in result.errors]
                await self.send(
                    {"identifier": identifier, "message": {"result": message, "more": True}}
                )
        finally:
            close = getattr(results, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()  # unregisters the listener

    async def close(self) -> None:
        for task in self.subscriptions.values():
            task.cancel()
        if self.subscriptions:
            await asyncio.gather(*self.subscriptions.values(), return_exceptions=True)
        self.subscriptions.clear()


@router.websocket(PATH)
async def cable(websocket: WebSocket) -> None:
    ctx = context_of(websocket)  # type: ignore[arg-type]
    principal = await _authenticate(websocket, ctx)
    if principal is None:
        await websocket.close(code=1008)  # before accepting: the upgrade is refused (403)
        return
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)
    connection = Connection(websocket, principal, ctx)
    await connection.send({"type": "welcome"})
    pinger = asyncio.create_task(connection.ping())
    try:
        while True:
            await connection.handle(await websocket.receive_text())
    except WebSocketDisconnect:
        pass
    finally:
        pinger.cancel()
        await connection.close()
        with contextlib.suppress(asyncio.CancelledError):
            await pinger

"""Exact-path dispatch of the instance's lean routes, ahead of FastAPI's router.

A code suggestion used to pass Starlette's exception middleware, FastAPI's exit-stack
middleware, the router's scan through the included routers (each saving and restoring its own
scope keys), the route's two exit stacks and an exception wrapper before reaching its handler:
about a tenth of the instance's own CPU per request in the bench profile (issue 14). Lean
routes (``routing.lean_arguments``: the request and PAT principals in, a ``Response`` out) need
none of it, and their paths are exact, so one dict look-up finds them. Their handler is still
the route class's (PAT checks first, the bounded body read), and an exception it raises is
answered by the app's exception handler for it, as the exception middleware would. Everything
else goes through the router as before.

It runs as the innermost middleware: after the request context (request id, request line)
and the client address rules.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from enclave.instance.api.routing import InstanceRoute, routes_in_order

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def lean_routes(routes: Iterable[BaseRoute]) -> dict[tuple[str, str], InstanceRoute]:
    """``(method, path)`` → the lean route the router would pick for exactly that request."""
    ordered = list(routes_in_order(routes))
    table: dict[tuple[str, str], InstanceRoute] = {}
    for route in ordered:
        if not isinstance(route, InstanceRoute) or route.lean_handler is None:
            continue
        if "{" in route.path:
            continue
        for method in route.methods or ():
            probe = {"type": "http", "method": method, "path": route.path, "root_path": ""}
            first = next(r for r in ordered if r.matches(probe)[0] is Match.FULL)
            if first is route:
                table.setdefault((method, route.path), route)
    return table


def handler_for(handlers: Mapping[Any, Callable[..., Any]], exc: Exception) -> Any:
    """The exception handler the exception middleware would pick (by class, nearest first)."""
    for kind in type(exc).__mro__:
        handler = handlers.get(kind)
        if handler is not None:
            return handler
    return None


class LeanRouteDispatch:
    """Pure ASGI: a lean route's exact ``method path`` straight to its handler; the rest on."""

    def __init__(self, app: ASGIApp, owner: FastAPI) -> None:
        # Built with the middleware stack, on the first request: every route is there by then.
        self.app = app
        self._routes = lean_routes(owner.router.routes)
        self._handlers = owner.exception_handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (
            self._routes.get((scope["method"], scope["path"]))
            if scope["type"] == "http" and not scope.get("root_path")
            else None
        )
        handler: Handler | None = route.lean_handler if route is not None else None
        if route is None or handler is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # what the router sets (the request line names the route)
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        try:
            response = await handler(request)
        except Exception as exc:
            on_error = handler_for(self._handlers, exc)
            if on_error is None:
                raise  # the request context middleware answers 500 with the request id
            answer = on_error(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)


__all__ = ["LeanRouteDispatch", "handler_for", "lean_routes"]

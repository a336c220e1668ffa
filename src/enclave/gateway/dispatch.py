"""Exact-path dispatch of the hot POST endpoints, ahead of Starlette's router.

Every gateway request used to pass Starlette's exception middleware, the router's route scan,
the route's request/response wrapper and two exception wrappers (each with its own ``send``
wrapper) before reaching the endpoint: about 6 µs of a request's CPU. The endpoints that serve
models (code completions, the OpenAI-compatible API, ...) are exact POST paths, so one dict
look-up finds them; everything else (templated paths, other methods, unknown paths) still goes
through the router, which keeps its 404/405 answers.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

HttpExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


def hot_routes(routes: Iterable[Any]) -> dict[str, Route]:
    """Exact POST paths → their route, for the paths the router would give to that route.

    A path is taken only when the router's own first full match for ``POST path`` is the
    route with exactly that path (an earlier templated route would win in the router) and
    the endpoint is a coroutine function (sync ones run in the router's thread pool).
    """
    routes = list(routes)
    table: dict[str, Route] = {}
    for route in routes:
        if not isinstance(route, Route) or "{" in route.path:
            continue
        if "POST" not in (route.methods or ()) or not inspect.iscoroutinefunction(route.endpoint):
            continue
        probe = {"type": "http", "method": "POST", "path": route.path, "root_path": ""}
        first = next(r for r in routes if r.matches(probe)[0] is Match.FULL)
        if first is route:
            table[route.path] = route
    return table


class HotRouteDispatch:
    """Pure ASGI: ``POST <exact hot path>`` goes straight to its endpoint, the rest on to
    ``app`` (Starlette's exception middleware and router).

    The scope gets what the router would put there (``route``, ``endpoint``, no path
    parameters); an :class:`HTTPException` from the endpoint is answered by
    ``on_http_exception``, as the exception middleware would.
    """

    def __init__(
        self,
        app: ASGIApp,
        routes: Iterable[Any],
        on_http_exception: HttpExceptionHandler,
    ) -> None:
        self.app = app
        self._hot = hot_routes(routes)
        self._on_http_exception = on_http_exception

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (
            self._hot.get(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path")
            else None
        )
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except HTTPException as exc:
            response = await self._on_http_exception(request, exc)
        await response(scope, receive, send)


__all__ = ["HotRouteDispatch", "hot_routes"]

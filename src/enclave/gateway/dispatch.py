"""Exact-path dispatch of the hot POST endpoints, ahead of Starlette's router.

Every gateway request used to pass Starlette's exception middleware, the router's route scan,
the route's request/response wrapper and two exception wrappers (each with its own ``send``
wrapper) before reaching the endpoint: about 6 µs of a request's CPU. The endpoints that serve
models (code completions, the OpenAI-compatible API, ...) are exact POST paths, so one dict
look-up finds them; everything else (templated paths, other methods, unknown paths) still goes
through the router, which keeps its 404/405 answers.

:class:`GatewayStarlette` goes one step further for those endpoints: when the client address
check would let the request through unchanged, the request context calls the dispatch itself,
without Starlette's entry, its error middleware and the address check's own layer (each a
coroutine, and the error middleware a ``send`` wrapper too, on every request).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from enclave.common.client_address import ClientAddressMiddleware
from enclave.gateway.middleware import RequestContextMiddleware

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

    def route_for(self, scope: Scope) -> Route | None:
        """The hot route an HTTP request's scope goes straight to, or None."""
        if scope["method"] == "POST" and not scope.get("root_path"):
            return self._hot.get(scope["path"])
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.route_for(scope) if scope["type"] == "http" else None
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


class _HotPath:
    """The three adjacent layers of the stack the hot path runs as one."""

    def __init__(
        self,
        context: RequestContextMiddleware,
        address: ClientAddressMiddleware,
        dispatch: HotRouteDispatch,
    ) -> None:
        self.context = context
        self.address = address
        self.dispatch = dispatch

    @classmethod
    def find(cls, stack: ASGIApp) -> _HotPath | None:
        """The request context, address check and dispatch when ``stack`` has them next to
        each other in that order (as the gateway's app does); otherwise None."""
        app: Any = stack
        while app is not None:
            if isinstance(app, RequestContextMiddleware):
                address = app.app
                dispatch = getattr(address, "app", None)
                if isinstance(address, ClientAddressMiddleware) and isinstance(
                    dispatch, HotRouteDispatch
                ):
                    return cls(app, address, dispatch)
                return None
            app = getattr(app, "app", None)
        return None


class GatewayStarlette(Starlette):
    """Starlette whose hot POST endpoints skip the outer layers of the middleware stack.

    The stack is Starlette's error middleware → request context → client address check →
    hot dispatch → the rest. For a hot POST from an address the check already knows to be
    allowed, the request context runs the hot dispatch directly: the same answer, the same
    log line and metrics. The error middleware has nothing to do there (the request context
    answers any exception with a JSON 500 first), nor does the address check. Anything else
    (an unknown address, a proxy, other paths, lifespan) takes the whole stack.
    """

    _hot_path: _HotPath | None = None
    _hot_path_looked_up = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self._hot_path
        if hot is None and not self._hot_path_looked_up:
            if self.middleware_stack is None:
                self.middleware_stack = self.build_middleware_stack()
            hot = self._hot_path = _HotPath.find(self.middleware_stack)
            self._hot_path_looked_up = True
        if (
            hot is not None
            and scope["type"] == "http"
            and hot.dispatch.route_for(scope) is not None
            and hot.address.passes(scope)
        ):
            scope["app"] = self
            await hot.context.handle(scope, receive, send, hot.dispatch)
            return
        await super().__call__(scope, receive, send)


__all__ = ["GatewayStarlette", "HotRouteDispatch", "hot_routes"]

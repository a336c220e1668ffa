"""The route class of every instance endpoint: authenticate first, then read a bounded body.

FastAPI reads (and buffers) a route's body before it runs any dependency, so a PAT check
written as a dependency would run only after an anonymous client's body had been read whole.
:class:`InstanceRoute` changes the order for every route:

1. the route's PAT checks (:class:`~enclave.instance.api.deps.PatAuth`, wherever they are
   among its dependencies) and web session checks (any :class:`~enclave.instance.api.deps.
   EarlyAuth`) run first: 401/403 before a single body byte is read;
2. the body is read with a limit counted while reading, chunked or not (413 ``{"message"}``
   naming the limit past it), and kept where FastAPI and ``Request.body()`` look for it, so
   routes parse it as usual.

Routes whose endpoint takes only the request and PAT principals and returns a ``Response``
(the AI hot paths) are then called directly: FastAPI's dependency solving and response
serialization would only pass those values through, and cost about a tenth of such a request's
CPU (bench/README.md, issue 14).

Subclasses pick the limit: :class:`InstanceRoute` the admin/account one
(``max_body_bytes``), :class:`AiTextRoute` the AI one (``max_ai_body_bytes``), and routes with
a fixed limit of their own set :attr:`InstanceRoute.fixed_limit`. ``create_app`` refuses to
start if a route is not an :class:`InstanceRoute`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, ClassVar, cast

from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_typed_return_annotation
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from enclave.common.body import BodyTooLarge, read_body
from enclave.instance.api.deps import EarlyAuth, PatAuth, context_of
from enclave.instance.api.errors import InstanceAPIError


def size_text(size: int) -> str:
    """``65536`` → ``64 KiB``, ``8388608`` → ``8 MiB``; other sizes in bytes."""
    if size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)} MiB"
    if size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} bytes"


def _pat_checks(dependant: Dependant) -> Iterator[EarlyAuth]:
    for dependency in dependant.dependencies:
        if isinstance(dependency.call, EarlyAuth):
            yield dependency.call
        yield from _pat_checks(dependency)


# What a lean endpoint is called with: keyword name → the request, or → a PAT check whose
# principal the route already has.
LeanArguments = tuple[tuple[str, PatAuth | None], ...]


def _only_passes_through(dependant: Dependant) -> bool:
    """True when FastAPI would compute nothing for ``dependant`` itself: no path, query, header,
    cookie or body parameters and no special parameters other than the request."""
    return not (
        dependant.path_params
        or dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.body_params
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
        or dependant.websocket_param_name
    )


def lean_arguments(route: APIRoute) -> LeanArguments | None:
    """How to call ``route``'s endpoint without FastAPI, or None when FastAPI is needed.

    Lean: the endpoint returns a ``Response`` (nothing to serialize) and takes only the request
    and results of PAT checks without sub-dependencies (which the route class has run already).
    """
    dependant = route.dependant
    returns = get_typed_return_annotation(route.endpoint)
    if not (isinstance(returns, type) and issubclass(returns, Response)):
        return None
    if not inspect.iscoroutinefunction(route.endpoint):
        return None  # FastAPI runs plain functions in the thread pool
    if not _only_passes_through(dependant) or dependant.http_connection_param_name:
        return None
    arguments: list[tuple[str, PatAuth | None]] = []
    if dependant.request_param_name:
        arguments.append((dependant.request_param_name, None))
    for dependency in dependant.dependencies:
        check = dependency.call
        if not isinstance(check, PatAuth) or dependency.dependencies or not dependency.name:
            return None
        arguments.append((dependency.name, check))
    return tuple(arguments)


class InstanceRoute(APIRoute):
    """Authenticate, then read the body with the admin/account limit (module docstring)."""

    # The InstanceSettings field with this route's limit, unless it has a fixed one.
    limit_setting: ClassVar[str] = "max_body_bytes"
    fixed_limit: ClassVar[int | None] = None
    # Request → response without FastAPI, for a lean route (hot_routes.py); None otherwise.
    lean_handler: Callable[[Request], Coroutine[Any, Any, Response]] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if lean_arguments(self) is not None:
            # The whole handler, with what subclasses wrap around it (a secret check, ...).
            self.lean_handler = self.get_route_handler()

    def body_limit(self, request: Request) -> tuple[int, str | None]:
        """The limit in bytes, and the setting that changes it (None when fixed)."""
        if self.fixed_limit is not None:
            return self.fixed_limit, None
        settings = context_of(request).settings.instance
        return int(getattr(settings, self.limit_setting)), self.limit_setting

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        checks = tuple(dict.fromkeys(_pat_checks(self.dependant)))
        lean = lean_arguments(self)
        endpoint = self.endpoint

        async def route(request: Request) -> Response:
            for check in checks:
                await check(request)  # raises 401/403; FastAPI later reuses the result
            limit, setting = self.body_limit(request)
            try:
                # Kept where Request.body() and FastAPI look first.
                request._body = await read_body(request, limit)
            except BodyTooLarge:
                where = f" (ENCLAVE_INSTANCE__{setting.upper()})" if setting else ""
                raise InstanceAPIError(
                    413,
                    f"the request body is over {size_text(limit)}, the limit of this "
                    f"endpoint{where}; send a smaller body",
                ) from None
            if lean is None:
                return await handler(request)
            arguments = {
                name: request if check is None else await check(request)  # kept result
                for name, check in lean
            }
            return cast(Response, await endpoint(**arguments))

        return route


class AiTextRoute(InstanceRoute):
    """AI endpoints that carry code or text to the model: the larger AI limit."""

    limit_setting = "max_ai_body_bytes"


def routes_in_order(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route in the order the router tries them, included routers (which newer FastAPI
    keeps nested) opened in place."""
    for route in routes:
        nested = getattr(route, "original_router", None)
        if nested is not None:
            yield from routes_in_order(nested.routes)
        else:
            yield route


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every API route, also inside included routers."""
    return (route for route in routes_in_order(routes) if isinstance(route, APIRoute))


def check_routes(routes: Iterable[BaseRoute]) -> None:
    """Refuse to build an app with an API route that skips the checks above."""
    for route in api_routes(routes):
        if not isinstance(route, InstanceRoute):
            raise TypeError(
                f"route {route.path} is a {type(route).__name__}: every instance route must be "
                "an InstanceRoute (authenticate before reading the body, bounded body)"
            )

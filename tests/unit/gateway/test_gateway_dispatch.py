"""Exact-path dispatch of the hot POST endpoints: the same answers as Starlette's router, and
the gateway app's hot path past the outer layers of its stack."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from enclave.common.client_address import ClientAddressMiddleware
from enclave.common.netrules import parse_networks
from enclave.config import EnclaveSettings
from enclave.gateway.app import ROUTES, create_app
from enclave.gateway.dispatch import GatewayStarlette, HotRouteDispatch, _HotPath, hot_routes
from enclave.gateway.middleware import RequestContextMiddleware


async def _echo(request: Request) -> Response:
    seen = {
        "endpoint": request.scope["endpoint"].__name__,
        "route": request.scope["route"].path,
        "path_params": request.path_params,
        "body": (await request.body()).decode(),
        "via_router": "router" in request.scope,  # the router marks the scopes it handles
    }
    return JSONResponse(seen)


async def _templated(request: Request) -> Response:
    return JSONResponse({"endpoint": "templated", "name": request.path_params["name"]})


async def _refuses(request: Request) -> Response:
    raise HTTPException(418, "no tea")


def _sync(request: Request) -> Response:
    return JSONResponse({"endpoint": "sync"})


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, exc.status_code)


TEST_ROUTES = (
    Route("/hot", _echo, methods=["POST"]),
    Route("/shadowed/{name}", _templated, methods=["POST"]),
    Route("/shadowed/exact", _echo, methods=["POST"]),  # the router gives it to the template
    Route("/teapot", _refuses, methods=["POST"]),
    Route("/sync", _sync, methods=["POST"]),
    Route("/read", _echo, methods=["GET"]),
)


def _client() -> TestClient:
    app = Starlette(
        routes=list(TEST_ROUTES),
        middleware=[
            Middleware(HotRouteDispatch, routes=TEST_ROUTES, on_http_exception=_on_http_exception)
        ],
        exception_handlers={HTTPException: _on_http_exception},
    )
    return TestClient(app)


def test_only_exact_async_post_routes_the_router_would_pick_are_hot() -> None:
    assert list(hot_routes(TEST_ROUTES)) == ["/hot", "/teapot"]


def test_the_gateways_model_endpoints_are_hot_and_templated_ones_are_not() -> None:
    hot = hot_routes(ROUTES)
    for path in ("/v2/code/completions", "/v2/completions", "/v1/completions"):
        assert hot[path].path == path
    assert hot["/v1/chat/completions"].path == "/v1/chat/completions"
    assert not any("{" in path for path in hot)
    assert "/metrics" not in hot and "/v1/models" not in hot


def test_a_hot_endpoint_sees_the_scope_the_router_would_give_it() -> None:
    answer = _client().post("/hot", content=b"payload")
    assert answer.status_code == 200
    assert answer.json() == {
        "endpoint": "_echo",
        "route": "/hot",
        "path_params": {},
        "body": "payload",
        "via_router": False,
    }


def test_everything_else_still_goes_through_the_router() -> None:
    client = _client()
    assert client.post("/shadowed/exact").json() == {"endpoint": "templated", "name": "exact"}
    assert client.post("/sync").json() == {"endpoint": "sync"}
    read = client.get("/read").json()
    assert (read["route"], read["via_router"]) == ("/read", True)
    wrong_method = client.get("/hot")
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"detail": "Method Not Allowed"}
    assert client.post("/nowhere").status_code == 404


def test_an_http_exception_from_a_hot_endpoint_gets_the_handlers_answer() -> None:
    answer = _client().post("/teapot")
    assert (answer.status_code, answer.json()) == (418, {"detail": "no tea"})


# -- GatewayStarlette: the hot path past the outer layers of the stack -----------------------


class _CountingAddressCheck(ClientAddressMiddleware):
    """The address check, counting the requests that reach it as a layer of the stack."""

    calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            type(self).calls += 1
        await super().__call__(scope, receive, send)


async def _boom(request: Request) -> Response:
    raise RuntimeError("a bug")


def _gateway_style_app(allowed: str) -> GatewayStarlette:
    routes = [*TEST_ROUTES, Route("/boom", _boom, methods=["POST"])]
    return GatewayStarlette(
        routes=routes,
        middleware=[
            Middleware(RequestContextMiddleware, routes=["/hot", "/boom"]),
            Middleware(_CountingAddressCheck, allowed=parse_networks([allowed], "allowed")),
            Middleware(HotRouteDispatch, routes=routes, on_http_exception=_on_http_exception),
        ],
        exception_handlers={HTTPException: _on_http_exception},
    )


def _async_client(app: GatewayStarlette, host: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://gw")


@pytest.mark.anyio
async def test_hot_posts_from_an_address_already_allowed_skip_the_outer_layers() -> None:
    _CountingAddressCheck.calls = 0
    async with _async_client(_gateway_style_app("127.0.0.0/8")) as client:
        first = await client.post("/hot", content=b"one")  # a new address: judged by the stack
        second = await client.post("/hot", content=b"two")  # known and allowed: the hot path
        assert _CountingAddressCheck.calls == 1
        for answer, body in ((first, "one"), (second, "two")):
            assert answer.status_code == 200
            assert answer.json()["body"] == body and answer.json()["via_router"] is False
            assert len(answer.headers["x-request-id"]) == 32  # the request context ran
            assert float(answer.headers["x-process-time"]) >= 0
        read = await client.get("/read")  # not a hot path: the whole stack
        assert (read.status_code, _CountingAddressCheck.calls) == (200, 2)
        teapot = await client.post("/teapot")
        assert (teapot.status_code, teapot.json()) == (418, {"detail": "no tea"})
        assert _CountingAddressCheck.calls == 2


@pytest.mark.anyio
async def test_a_refused_address_is_refused_on_the_hot_paths_every_time() -> None:
    async with _async_client(_gateway_style_app("10.0.0.0/8")) as client:
        for _ in range(2):
            answer = await client.post("/hot", content=b"x")
            assert answer.status_code == 403
            assert "127.0.0.1 is not allowed" in answer.json()["detail"]


@pytest.mark.anyio
async def test_a_failing_hot_endpoint_gets_the_request_contexts_json_500_either_way() -> None:
    async with _async_client(_gateway_style_app("127.0.0.0/8")) as client:
        for _ in range(2):  # the first through the stack, the second on the hot path
            answer = await client.post("/boom")
            request_id = answer.headers["x-request-id"]
            assert answer.status_code == 500
            assert answer.json() == {
                "detail": f"Internal error in the AI gateway (request id {request_id}); the "
                "gateway log has the details"
            }


def test_the_gateway_app_has_its_hot_path() -> None:
    app = create_app(EnclaveSettings())
    hot = _HotPath.find(app.build_middleware_stack())
    assert hot is not None
    assert hot.dispatch.route_for(
        {"type": "http", "method": "POST", "path": "/v2/code/completions", "root_path": ""}
    )
    assert not hot.dispatch.route_for(
        {"type": "http", "method": "POST", "path": "/v2/code/completions", "root_path": "/ai"}
    )

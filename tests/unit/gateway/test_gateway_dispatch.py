"""Exact-path dispatch of the hot POST endpoints: the same answers as Starlette's router."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from enclave.gateway.app import ROUTES
from enclave.gateway.dispatch import HotRouteDispatch, hot_routes


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

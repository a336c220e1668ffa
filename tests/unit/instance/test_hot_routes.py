"""Lean routes dispatched without FastAPI's router answer exactly as through it."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient
from starlette.responses import JSONResponse, Response

from enclave.config import EnclaveSettings
from enclave.instance.api.errors import InstanceAPIError, install_error_handlers
from enclave.instance.api.hot_routes import LeanRouteDispatch, handler_for, lean_routes
from enclave.instance.api.routing import InstanceRoute
from enclave.instance.app import create_app


class SmallBodyRoute(InstanceRoute):
    fixed_limit = 1024  # no instance context needed for the limit


def _build() -> tuple[FastAPI, list[str]]:
    calls: list[str] = []
    router = APIRouter(route_class=SmallBodyRoute)

    @router.post("/hot")
    async def hot(request: Request) -> Response:
        calls.append("hot")
        seen = {
            "route": request.scope["route"].path,
            "body": (await request.body()).decode(),
            "via_router": "router" in request.scope,  # FastAPI's router marks its scopes
        }
        return JSONResponse(seen)

    @router.post("/refuses")
    async def refuses(request: Request) -> Response:
        raise InstanceAPIError(409, "already there")

    @router.post("/crashes")
    async def crashes(request: Request) -> Response:
        raise RuntimeError("boom")

    @router.post("/shadowed/{name}")
    async def templated(request: Request, name: str) -> Response:
        return JSONResponse({"templated": name})

    @router.post("/shadowed/exact")  # the router gives it to the template above
    async def shadowed(request: Request) -> Response:
        return JSONResponse({"exact": True})

    @router.get("/model")
    async def typed(request: Request) -> dict[str, str]:  # serialized by FastAPI: not lean
        return {"typed": "yes"}

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(LeanRouteDispatch, owner=app)
    return app, calls


def test_only_exact_lean_routes_the_router_would_pick_are_dispatched() -> None:
    app, _ = _build()
    assert sorted(lean_routes(app.router.routes)) == [
        ("POST", "/crashes"),
        ("POST", "/hot"),
        ("POST", "/refuses"),
    ]


def test_a_lean_route_answers_as_through_the_router() -> None:
    app, calls = _build()
    client = TestClient(app, raise_server_exceptions=False)
    answer = client.post("/hot", content=b"payload")
    assert answer.json() == {"route": "/hot", "body": "payload", "via_router": False}
    assert calls == ["hot"]
    # Its error goes through the app's handler for it, as the exception middleware would.
    refused = client.post("/refuses")
    assert refused.status_code == 409 and "already there" in refused.json()["message"]
    # The route class's checks still run: the body limit.
    assert client.post("/hot", content=b"x" * 2048).status_code == 413
    # Anything else the router routes as before.
    assert client.post("/shadowed/exact").json() == {"templated": "exact"}
    assert client.get("/model").json() == {"typed": "yes"}
    assert client.get("/hot").status_code == 405
    assert client.post("/nowhere").status_code == 404


class GuardedRoute(SmallBodyRoute):
    """Wraps the route class's handler, as routes with a secret check do."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def route(request: Request) -> Response:
            if request.headers.get("x-secret") != "s3cret":
                raise InstanceAPIError(401, "401 Unauthorized")
            return await inner(request)

        return route


def test_what_a_route_class_wraps_around_its_handler_still_runs() -> None:
    router = APIRouter(route_class=GuardedRoute)

    @router.post("/guarded")
    async def guarded(request: Request) -> Response:
        return Response(status_code=204)

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(LeanRouteDispatch, owner=app)
    assert ("POST", "/guarded") in lean_routes(app.router.routes)
    client = TestClient(app)
    assert client.post("/guarded").status_code == 401
    assert client.post("/guarded", headers={"x-secret": "s3cret"}).status_code == 204


def test_an_unhandled_error_is_left_to_the_outer_middleware() -> None:
    app, _ = _build()
    client = TestClient(app, raise_server_exceptions=False)
    assert client.post("/crashes").status_code == 500


@pytest.fixture
def instance_app(settings: EnclaveSettings) -> FastAPI:
    return create_app(settings)


def test_pat_routes_are_lean_and_still_authenticate(instance_app: FastAPI) -> None:
    hot = lean_routes(instance_app.router.routes)
    assert ("POST", "/api/v4/code_suggestions/completions") in hot
    client = TestClient(instance_app, client=("127.0.0.1", 50000))
    refused = client.post("/api/v4/code_suggestions/completions", json={})
    assert refused.status_code == 401


def test_the_nearest_handler_by_class_wins() -> None:
    class Base(Exception):
        pass

    class Child(Base):
        pass

    def on_base(request: Request, exc: Exception) -> Response:
        return Response("base")

    assert handler_for({Base: on_base}, Child()) is on_base
    assert handler_for({Base: on_base}, ValueError()) is None

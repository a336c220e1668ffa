"""GET /openapi.json and /docs: every mounted route listed, bodies described, no CDN."""

from __future__ import annotations

import re

import pytest
from gateway_fakes import Harness
from starlette.routing import Route

from enclave.gateway.openapi import OPERATIONS, PUBLIC_SUMMARIES

pytestmark = pytest.mark.anyio

# The routes that read a JSON body (parse_body or the OpenAI API's read_json_object).
BODY_ROUTES = {
    "/v2/code/completions",
    "/v2/completions",
    "/v2/code/generations",
    "/v4/code/suggestions",
    "/v2/chat/agent",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/chat/{chat_invokable}",
    "/v1/prompts/{prompt_id}",
}


def mounted(gw: Harness) -> list[Route]:
    return [route for route in gw.app.routes if isinstance(route, Route)]


def doc_path(route: Route) -> str:
    return route.path.replace(":path}", "}")


async def test_every_mounted_route_is_listed_with_every_method(gw: Harness) -> None:
    response = await gw.client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    routes = mounted(gw)
    assert len(routes) >= 18
    for route in routes:
        item = document["paths"].get(doc_path(route))
        assert item is not None, f"{route.path} is missing from /openapi.json"
        methods = {m.lower() for m in route.methods or () if m != "HEAD"}
        assert methods <= set(item), f"{route.path}: {methods - set(item)} not listed"
    assert set(document["paths"]) == {doc_path(route) for route in routes}


async def test_every_route_has_its_own_entry(gw: Harness) -> None:
    # A new route must say what it is and who may call it, not fall back to its path.
    for route in mounted(gw):
        assert route.endpoint in OPERATIONS or route.path in PUBLIC_SUMMARIES, route.path


async def test_each_body_route_describes_its_body(gw: Harness) -> None:
    document = (await gw.client.get("/openapi.json")).json()
    components = document["components"]["schemas"]
    with_body = {
        path for path, item in document["paths"].items() if "requestBody" in item.get("post", {})
    }
    assert with_body == BODY_ROUTES
    for path in BODY_ROUTES:
        schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        ref = schema["schema"].get("$ref")
        if ref is not None:
            assert ref.removeprefix("#/components/schemas/") in components, ref
        else:
            assert schema["schema"]["required"], path
    # Two models named CurrentFile (chat agent, code suggestions) stay distinct.
    current_files = [name for name in components if name.endswith("CurrentFile")]
    assert len(current_files) == 2
    suggestions = components["SuggestionsRequest"]
    assert suggestions["required"] == ["current_file"]
    assert suggestions["properties"]["current_file"]["$ref"].endswith("schemas__CurrentFile")


async def test_gitlab_endpoints_declare_the_token_and_headers(gw: Harness) -> None:
    document = (await gw.client.get("/openapi.json")).json()
    completions = document["paths"]["/v2/code/completions"]["post"]
    assert completions["security"] == [{"bearer": []}]
    headers = {p["name"] for p in completions["parameters"] if p["in"] == "header"}
    assert {"x-gitlab-instance-id", "x-gitlab-realm"} <= headers
    assert "security" not in document["paths"]["/monitoring/healthz"]["get"]
    prompt = document["paths"]["/v1/prompts/{prompt_id}"]["post"]["parameters"][0]
    assert prompt == {
        "name": "prompt_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
    }


async def test_docs_page_is_self_contained(gw: Harness) -> None:
    response = await gw.client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = response.text
    # Air-gapped: no script, nothing fetched from anywhere else.
    assert "<script" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    for route in mounted(gw):
        assert f"<code>{doc_path(route)}</code>" in page, route.path


async def test_document_and_page_need_no_token_but_respect_the_client_allow_list(
    gw: Harness,
) -> None:
    for path in ("/openapi.json", "/docs"):
        assert (await gw.client.get(path)).status_code == 200
        refused = await gw.post_from("203.0.113.9", path)
        assert refused.status_code == 403

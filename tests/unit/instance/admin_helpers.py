"""Helpers for the admin API tests: an HTTP client bound to an instance and a fake model
server that lists its models like vLLM's ``/v1/models``."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from tests.unit.instance.conftest import LiveInstance

ADMIN = "/api/v4/admin/ai"
_NAMES = itertools.count(1)


class Api:
    def __init__(self, instance: LiveInstance, token: str | None = None) -> None:
        self.instance = instance
        self.token = token if token is not None else instance.admin_token

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"PRIVATE-TOKEN": self.token} if self.token else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx.request(
            method, self.instance.url + path, headers=headers, timeout=30, **kwargs
        )

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, json=json, **kwargs)

    def put(self, path: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", path, json=json, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)

    def create_model(self, **fields: Any) -> dict[str, Any]:
        body = {
            "name": f"model-{next(_NAMES)}",
            "model": "mistral",
            "provider": "api",
            "endpoint": "http://10.0.0.5:8000/v1",
            "identifier": "custom_openai/Mistral-7B-Instruct-v0.3",
            **fields,
        }
        response = self.post(f"{ADMIN}/self_hosted_models", body)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result


@contextmanager
def fake_model_server(models: list[str], api_key: str | None = None) -> Iterator[str]:
    """An OpenAI-compatible server on loopback that only answers ``GET /v1/models``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if api_key is not None and self.headers.get("Authorization") != f"Bearer {api_key}":
                self._send(401, {"error": "invalid api key"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": m} for m in models]})
            else:
                self._send(404, {"error": "not found"})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()

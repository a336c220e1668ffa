"""Helpers for the model tests: the test API key and a stdlib HTTP client for loopback calls."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

TEST_API_KEY = "enclkey-unit-test-key-0123456789abcdefghijklmnop"
TINY_NAME = "tiny"


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)

    def sse_events(self) -> list[Any]:
        """The ``data:`` payloads of an SSE body, JSON-decoded; ``[DONE]`` stays a string."""
        events: list[Any] = []
        for line in self.body.decode().splitlines():
            if line.startswith("data: "):
                payload = line.removeprefix("data: ")
                events.append(payload if payload == "[DONE]" else json.loads(payload))
        return events


def call(
    url: str,
    body: dict[str, Any] | None = None,
    api_key: str | None = TEST_API_KEY,
    timeout: float = 60.0,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> Reply:
    """POST ``body`` as JSON (GET without one) and return status and raw body, errors included."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    if api_key is not None:
        sent["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=sent, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return Reply(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read(), dict(exc.headers))

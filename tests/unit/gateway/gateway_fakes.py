"""Fakes for the gateway tests: an OIDC issuer, an OpenAI-compatible model server, tokens.

Everything runs on 127.0.0.1 in the test's own event loop. (A plain module, not conftest, so
test modules can import it without a package.)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.types import Message

from enclave.common import wire

INSTANCE_ID = "5f0f0f0f-1111-4222-8333-444455556666"
MODEL_API_KEY = "sk-test-model-key-0123456789abcdef"
# The secret the instance and the gateway share for the feature→model routes.
ROUTES_SECRET = "enclkey-routes-test-secret-0123456789"
# The key of the model the administrator assigned (the routes'), unlike the one bodies carry.
ROUTE_MODEL_KEY = "admin-assigned-model-key-5a7b9c"
ROUTE_IDENTIFIER = "custom_openai/admin-served-model"


# -- keys -----------------------------------------------------------------------------------


@dataclass
class Keys:
    rsa: rsa.RSAPrivateKey
    rsa_other: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    ed: ed25519.Ed25519PrivateKey
    gateway: rsa.RSAPrivateKey  # the gateway's own signing key (user tokens)


def new_keys() -> Keys:
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa_other=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec=ec.generate_private_key(ec.SECP256R1()),
        ed=ed25519.Ed25519PrivateKey.generate(),
        gateway=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


def pem_of(private_key: Any) -> bytes:
    return bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def jwk_of(private_key: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        data = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        data = OKPAlgorithm.to_jwk(public, as_dict=True)
    data["kid"] = kid
    data["use"] = "sig"
    if alg:
        data["alg"] = alg
    return dict(data)


# -- fake issuer ----------------------------------------------------------------------------


def route_entry(feature: str, primitive: str, endpoint: str, **model: Any) -> dict[str, Any]:
    """One available route of the instance's routes document."""
    return {
        "feature": feature,
        "unit_primitive": primitive,
        "available": True,
        "model": {
            "name": f"{feature}-model",
            "family": "codestral",
            "provider": "api",
            "endpoint": endpoint,
            "identifier": ROUTE_IDENTIFIER,
            "api_key": ROUTE_MODEL_KEY,
            **model,
        },
    }


class FakeIssuer:
    """Serves OIDC discovery and a JWKS, and the instance's feature→model routes when shown
    :data:`ROUTES_SECRET`; counts fetches; can fail on demand."""

    def __init__(self) -> None:
        self.base = ""
        self.jwks: dict[str, Any] = {"keys": []}
        self.routes: dict[str, Any] = {"version": 1, "routes": []}
        self.routes_status: int | None = None  # answer the routes endpoint with this instead
        self.routes_hits = 0
        self.secret_seen: list[str] = []
        self.discovery_hits = 0
        self.jwks_hits = 0
        self.fail_status: int | None = None
        self.advertised_issuer: str | None = None
        self.delay_s = 0.0  # answer the key endpoint this late
        self.raw_keys: bytes | None = None  # answer the key endpoint with these bytes instead
        # Usage pushes (POST /api/v4/internal/ai/usage), as the instance receives them.
        self.usage_pushes: list[dict[str, Any]] = []
        self.usage_status: int | None = None  # answer pushes with this instead
        self._runner: web.AppRunner | None = None

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_hits += 1
        if self.fail_status:
            return web.Response(status=self.fail_status)
        return web.json_response(
            {
                "issuer": self.advertised_issuer or self.base,
                "jwks_uri": f"{self.base}/oauth/discovery/keys",
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def _keys(self, request: web.Request) -> web.Response:
        self.jwks_hits += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_status:
            return web.Response(status=self.fail_status)
        if self.raw_keys is not None:
            return web.Response(body=self.raw_keys, content_type="application/json")
        return web.json_response(self.jwks)

    async def _routes(self, request: web.Request) -> web.Response:
        self.routes_hits += 1
        self.secret_seen.append(request.headers.get("Authorization", ""))
        if self.routes_status:
            return web.Response(status=self.routes_status)
        if request.headers.get("Authorization") != f"Bearer {ROUTES_SECRET}":
            return web.Response(status=401)
        return web.json_response(self.routes)

    async def _usage(self, request: web.Request) -> web.Response:
        if self.usage_status:
            return web.Response(status=self.usage_status)
        if request.headers.get("Authorization") != f"Bearer {ROUTES_SECRET}":
            return web.Response(status=401)
        self.usage_pushes.append(await request.json())
        return web.Response(status=204)

    @property
    def hits(self) -> int:
        """Key fetches (discovery and JWKS); routes fetches are counted apart."""
        return self.discovery_hits + self.jwks_hits

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/oauth/discovery/keys", self._keys)
        app.router.add_get("/api/v4/internal/ai/gateway_routes", self._routes)
        app.router.add_post("/api/v4/internal/ai/usage", self._usage)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


# -- fake model server ----------------------------------------------------------------------


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    json: dict[str, Any]


@dataclass
class FakeModel:
    """OpenAI-compatible /v1/completions and /v1/chat/completions."""

    base: str = ""
    text: str = "    return a + b\n"
    finish_reason: str = "stop"
    usage: dict[str, int] | None = field(
        default_factory=lambda: {"prompt_tokens": 27, "completion_tokens": 9}
    )
    chunks: list[str] = field(default_factory=lambda: ["    return", " a", " + b", "\n"])
    status: int = 200
    error_body: dict[str, Any] | None = None
    retry_after: str | None = None
    endless_stream: bool = False  # keeps sending chunks until the client goes away
    stream_error: str | None = None  # an error event after the chunks, instead of the end
    # After the chunks, instead of the end: "abort" closes the connection without the chunked
    # terminator (the model server was killed); "eof" ends the body cleanly but without a
    # finish_reason or [DONE] (a server that went away behind a proxy).
    stream_cut: Literal["abort", "eof"] | None = None
    done_frame: bytes = b"data: [DONE]\n\n"  # how the stream ends; b"": without [DONE]
    ignore_stream: bool = False  # answer a stream request with one JSON body
    location: str | None = None  # Location header of non-200 answers (redirects)
    delay_s: float = 0.0  # answer this late
    set_cookie: str | None = None  # a Set-Cookie header on whole answers (vendor affinity)
    requests: list[Recorded] = field(default_factory=list)
    stream_closed: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.base}/v1"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.status != 200:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            if self.location:
                headers["Location"] = self.location
            return web.json_response(
                self.error_body or {"error": {"message": "upstream says no"}},
                status=self.status,
                headers=headers,
            )
        chat = request.path.endswith("/chat/completions")
        if body.get("stream") and not self.ignore_stream:
            # Like OpenAI and vLLM: token counts come in a last, choice-less chunk, and only
            # when the request asked for them.
            options = body.get("stream_options") or {}
            return await self._stream(request, chat, bool(options.get("include_usage")))
        choice: dict[str, Any] = {"index": 0, "finish_reason": self.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": self.text}
        else:
            choice["text"] = self.text
        answer: dict[str, Any] = {
            "id": "cmpl-1",
            "object": "chat.completion" if chat else "text_completion",
            "model": body.get("model"),
            "choices": [choice],
        }
        if self.usage is not None:
            answer["usage"] = self.usage
        cookie = {"Set-Cookie": self.set_cookie} if self.set_cookie else None
        return web.json_response(answer, headers=cookie)

    def _event(self, text: str, chat: bool, finish: str | None = None) -> bytes:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["delta"] = {"content": text}
        else:
            choice["text"] = text
        return b"data: " + orjson.dumps({"id": "c", "choices": [choice]}) + b"\n\n"

    async def _stream(
        self, request: web.Request, chat: bool, include_usage: bool = False
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(b": keep-alive comment\n\n")
            for chunk in self.chunks:
                await response.write(self._event(chunk, chat))
                await asyncio.sleep(0)
            if self.stream_error:
                error = {"error": {"message": self.stream_error, "code": 500}}
                await response.write(b"data: " + orjson.dumps(error) + b"\n\n")
                return response
            if self.stream_cut is not None:
                return await cut_stream(request, response, self.stream_cut)
            while self.endless_stream:
                await asyncio.sleep(0.01)
                await response.write(self._event("x", chat))
            await response.write(self._event("", chat, self.finish_reason))
            if include_usage and self.usage is not None:
                usage_event = {"id": "c", "choices": [], "usage": self.usage}
                await response.write(b"data: " + orjson.dumps(usage_event) + b"\n\n")
            if self.done_frame:
                await response.write(self.done_frame)
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            self.stream_closed.set()
            raise
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", self._handle)
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def cut_stream(
    request: web.Request, response: web.StreamResponse, how: Literal["abort", "eof"]
) -> web.StreamResponse:
    """End a streamed answer early, as a model server that dies mid-answer does."""
    if how == "abort":
        assert request.transport is not None
        request.transport.close()
    else:
        await response.write_eof()
    return response


# -- tokens and requests --------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    app: Starlette
    client: httpx.AsyncClient
    issuer: FakeIssuer
    model: FakeModel
    clock: FakeClock
    keys: Keys

    def token(
        self,
        *,
        key: Any = None,
        kid: str = "key-1",
        alg: str = "RS256",
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer.base,
            "sub": INSTANCE_ID,
            "gitlab_instance_id": INSTANCE_ID,
            "aud": wire.AUDIENCE,
            "gitlab_realm": wire.REALM_SELF_MANAGED,
            "scopes": [wire.UP_COMPLETE_CODE, wire.UP_GENERATE_CODE],
            "iat": now,
            "nbf": now - 5,
            "exp": now + 3600,
            "jti": uuid.uuid4().hex,
        }
        for name, value in claims.items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        signing_key = key if key is not None else self.keys.rsa
        return jwt.encode(
            payload, signing_key, algorithm=alg, headers={"kid": kid, **(headers or {})}
        )

    def headers(self, token: str | None = None, **overrides: str | None) -> dict[str, str]:
        values: dict[str, str | None] = {
            "Authorization": f"Bearer {token or self.token()}",
            "X-Gitlab-Authentication-Type": "oidc",
            "X-Gitlab-Instance-Id": INSTANCE_ID,
            "X-Gitlab-Realm": wire.REALM_SELF_MANAGED,
            "X-Gitlab-Global-User-Id": "user-1",
        }
        values.update(overrides)
        return {name: value for name, value in values.items() if value is not None}

    def user_body(self, **overrides: Any) -> dict[str, Any]:
        """A direct-access request as an IDE sends it: no model fields."""
        body = self.body(**overrides)
        for name in (
            "model_provider",
            "model_name",
            "model_endpoint",
            "model_api_key",
            "model_identifier",
        ):
            if name not in overrides:
                body.pop(name, None)
        return body

    def body(self, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "project_path": "group/project",
            "project_id": 42,
            "current_file": {
                "file_name": "app/calc.py",
                "language_identifier": "python",
                "content_above_cursor": "def add(a, b):\n",
                "content_below_cursor": "\n\nprint(add(1, 2))\n",
            },
            "stream": False,
            "choices_count": 0,
            "context": [],
            "telemetry": [],
            "prompt_version": 2,
            "prompt": "",
            "model_provider": "litellm",
            "model_name": "codestral",
            "model_endpoint": self.model.endpoint,
            "model_api_key": MODEL_API_KEY,
            "model_identifier": "custom_openai/codestral-local",
        }
        body.update(overrides)
        return body

    async def complete(
        self, body: dict[str, Any] | None = None, path: str = "/v2/code/completions", **kw: Any
    ) -> httpx.Response:
        headers = kw.pop("headers", None) or self.headers()
        return await self.client.post(path, json=body or self.body(), headers=headers, **kw)

    async def post_from(
        self, client_host: str, path: str = "/v2/code/completions", **kw: Any
    ) -> httpx.Response:
        """POST as if from ``client_host`` (the ASGI ``client`` address)."""
        transport = httpx.ASGITransport(app=self.app, client=(client_host, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            kw.setdefault("headers", self.headers())
            kw.setdefault("json", self.body())
            return await client.post(path, **kw)

    async def user_token(self, user_id: str = "user-1", **header_overrides: str | None) -> str:
        """A user token from /v1/code/user_access_token (direct access)."""
        headers = self.headers(**{"X-Gitlab-Global-User-Id": user_id, **header_overrides})
        response = await self.client.post("/v1/code/user_access_token", headers=headers)
        assert response.status_code == 200, response.text
        return str(response.json()["token"])

    def user_headers(
        self, token: str, user_id: str = "user-1", **overrides: str | None
    ) -> dict[str, str]:
        return self.headers(token, **{"X-Gitlab-Global-User-Id": user_id, **overrides})

    async def warm_keys(self) -> None:
        """Load the issuer's keys without a model call (readiness fetches them)."""
        response = await self.client.get("/monitoring/ready")
        assert response.status_code == 200, response.text


async def call_asgi(
    gw: Harness,
    body: dict[str, Any],
    disconnect: asyncio.Event | None = None,
    on_body: Any = None,
    *,
    path: str = "/v2/code/completions",
    request_headers: dict[str, str] | None = None,
) -> list[Message]:
    """Call the app directly to see every ASGI message it sends (httpx buffers them)."""
    given = request_headers if request_headers is not None else gw.headers()
    headers = [(k.lower().encode(), v.encode()) for k, v in given.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [*headers, (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("gw", 80),
        "state": {},
    }
    sent: list[Message] = []
    delivered = False
    never = asyncio.Event()

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": orjson.dumps(body), "more_body": False}
        await (disconnect or never).wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if on_body is not None and message["type"] == "http.response.body":
            on_body(message)

    await gw.app(scope, receive, send)
    return sent


HarnessFactory = Callable[..., Any]

"""Fixtures for the instance: settings in a temporary data dir, a live instance served by
uvicorn on a free loopback port, and a fake AI gateway (aiohttp) that records what it gets."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from aiohttp import web
from sqlalchemy import select

from enclave.common.net import free_port
from enclave.config import EnclaveSettings
from enclave.instance.app import create_app
from enclave.instance.context import InstanceContext
from enclave.instance.db.models import FeatureSetting, PersonalAccessToken, User
from enclave.instance.pats import create_token
from tests.unit.instance.pg import PostgresServer, postgres_server, postgres_wanted

COMPLETION_RESPONSE: dict[str, Any] = {
    "id": "id",
    "model": {"engine": "litellm", "name": "custom_openai/general", "lang": "python"},
    "experiments": [],
    "object": "text_completion",
    "created": 1795633607,
    "choices": [{"text": "    return a + b\n", "index": 0, "finish_reason": "stop"}],
}


MODEL_API_KEY = "enclkey-model-secret-0123456789abcdef"
EMBEDDED_ENDPOINT = "http://127.0.0.1:1/v1"


@pytest.fixture(scope="session", autouse=True)
def _isolated_env() -> Iterator[None]:
    """No ENCLAVE_* variable from the developer's shell may leak into a test."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("ENCLAVE_"):
                patch.delenv(name)
        yield


# --- database backends ------------------------------------------------------------------------
# Every test that touches the database runs on SQLite and on PostgreSQL: it asks for the
# ``db_backend`` fixture (directly, through ``settings`` / ``instance`` / ..., or with
# ``pytestmark = pytest.mark.usefixtures("db_backend")``) and ``make_settings`` then points the
# data dir at a database of that backend.


@dataclass
class Backend:
    name: str
    server: PostgresServer | None = None

    def database_url_for(self, data_dir: Path) -> str | None:
        """None for SQLite (the default file in the data dir); one database per data dir else."""
        if self.server is None:
            return None
        return self.server.database_for(str(data_dir))

    def new_database_url(self, tmp_path: Path) -> str:
        if self.server is None:
            return f"sqlite:///{tmp_path / f'db{time.monotonic_ns()}' / 'instance.db'}"
        return self.server.create_database()


_current_backend = Backend("sqlite")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    wanted, reason = postgres_wanted()
    if not wanted:
        pytest.skip(reason)
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def db_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    global _current_backend
    backend = (
        Backend("postgresql", request.getfixturevalue("postgres"))
        if request.param == "postgresql"
        else Backend("sqlite")
    )
    previous, _current_backend = _current_backend, backend
    try:
        yield backend
    finally:
        _current_backend = previous


@pytest.fixture()
def sqlite_only(db_backend: Backend) -> None:
    if db_backend.name != "sqlite":
        pytest.skip("checks SQLite-specific behaviour")


def make_settings(data_dir: Path, **instance: Any) -> EnclaveSettings:
    if "database_url" not in instance:
        url = _current_backend.database_url_for(data_dir)
        if url is not None:
            instance["database_url"] = url
    return EnclaveSettings(data_dir=data_dir, instance=instance)


@pytest.fixture()
def settings(tmp_path: Path, db_backend: Backend) -> EnclaveSettings:
    return make_settings(tmp_path / "data")


# --- fake gateway ----------------------------------------------------------------------------


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw_path: str = ""


Handler = Callable[[web.Request, "FakeGateway"], Awaitable[web.StreamResponse]]


async def answer_json(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response(COMPLETION_RESPONSE)


@dataclass
class FakeGateway:
    """An AI gateway stand-in on a loopback port; ``handler`` decides each answer."""

    handler: Handler = answer_json
    requests: list[Recorded] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    port: int = 0
    # Answer GET /v1/models as Enclave's gateway does (401 without a token); False: 404,
    # as GitLab's gateway, which has no OpenAI-compatible API.
    enclave: bool = True
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self, handler: Handler = answer_json) -> None:
        self.handler = handler
        self.enclave = True
        self.requests.clear()
        self.release.clear()
        self.disconnected.clear()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            Recorded(request.path, dict(request.headers), await request.json(), request.raw_path)
        )
        return await self.handler(request, self)

    async def _openai_models(self, request: web.Request) -> web.StreamResponse:
        if not self.enclave:
            return web.json_response({"detail": "Not Found"}, status=404)
        error = {"message": "a token is required", "type": "invalid_request_error", "code": None}
        return web.json_response({"error": error}, status=401)

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    def start(self) -> None:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_post("/v2/code/completions", self._dispatch)
            app.router.add_post("/v2/code/generations", self._dispatch)
            app.router.add_post("/v1/code/user_access_token", self._dispatch)
            app.router.add_post("/v1/prompts/{prompt_id:.*}", self._dispatch)
            app.router.add_post("/v1/chat/{invokable}", self._dispatch)
            app.router.add_post("/v2/chat/agent", self._dispatch)
            app.router.add_get("/monitoring/healthz", self._healthz)
            app.router.add_get("/v1/models", self._openai_models)
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.port = int(self._runner.addresses[0][1])
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-gateway", daemon=True)
        self._thread.start()
        assert ready.wait(10), "fake gateway did not start"

    def stop(self) -> None:
        assert self._loop is not None and self._runner is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def wait_for(event: threading.Event, seconds: float) -> bool:
    """Wait for a thread event (set by the test) from the gateway's loop without blocking it."""
    return await asyncio.to_thread(event.wait, seconds)


def request_lines(
    logs: list[MutableMapping[str, Any]], request_id: str
) -> list[MutableMapping[str, Any]]:
    """The request log lines for ``request_id``, waiting briefly: the line is written after the
    response went out, so the client can be faster than the log."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [e for e in logs if e.get("event") == "request" and e["request_id"] == request_id]
        if lines:
            return lines
        time.sleep(0.01)
    return []


@pytest.fixture(scope="module")
def gateway() -> Iterator[FakeGateway]:
    fake = FakeGateway()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


# --- live instance ---------------------------------------------------------------------------


@dataclass
class LiveInstance:
    url: str
    settings: EnclaveSettings
    ctx: InstanceContext
    admin_token: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    # Helpers that change state straight in the database -----------------------------------
    def new_token(
        self,
        scopes: tuple[str, ...] = ("api",),
        *,
        username: str | None = None,
        expires_at: datetime | None = None,
        revoked: bool = False,
        blocked: bool = False,
    ) -> str:
        username = username or f"user{time.monotonic_ns()}"
        with self.ctx.sessions() as session, session.begin():
            user = session.scalar(select(User).where(User.username == username))
            if user is None:
                user = User(
                    username=username,
                    name=username,
                    email=f"{username}@example.com",
                    is_admin=False,
                    blocked=blocked,
                )
                session.add(user)
                session.flush()
            created = create_token(session, user, name="test", scopes=scopes, expires_at=expires_at)
            record = session.get(PersonalAccessToken, created.id)
            assert record is not None
            record.revoked = revoked
            return created.plaintext

    def set_feature(self, feature: str, provider: str, model_id: int | None = None) -> None:
        with self.ctx.sessions() as session, session.begin():
            row = session.scalar(select(FeatureSetting).where(FeatureSetting.feature == feature))
            if row is None:
                row = FeatureSetting(feature=feature)
                session.add(row)
            row.provider = provider
            row.self_hosted_model_id = model_id


def start_instance(settings: EnclaveSettings, port: int) -> LiveInstance:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        loop="asyncio",
        # As enclave.common.serve: only ClientAddressMiddleware (trusted_proxies) may believe
        # X-Forwarded-For; uvicorn's own proxy headers would trust it from any loopback peer.
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="instance", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "the instance server died at start-up"
        assert time.monotonic() < deadline, "the instance server did not start"
        time.sleep(0.01)
    admin_token = settings.admin_token_file.read_text().strip()
    return LiveInstance(
        f"http://127.0.0.1:{port}", settings, app.state.ctx, admin_token, server, thread
    )


@pytest.fixture()
def live_instance_factory(
    tmp_path: Path, db_backend: Backend
) -> Iterator[Callable[..., LiveInstance]]:
    """Start instances with given instance settings; all are stopped at the end of the test."""
    started: list[LiveInstance] = []

    def factory(data_dir: Path | None = None, **instance: Any) -> LiveInstance:
        port = free_port()
        instance.setdefault("external_url", f"http://127.0.0.1:{port}")
        live = start_instance(
            make_settings(data_dir or tmp_path / f"data{len(started)}", **instance), port
        )
        started.append(live)
        return live

    yield factory
    for live in started:
        live.stop()


def write_model_api_key(data_dir: Path, key: str = MODEL_API_KEY) -> None:
    (data_dir / "model").mkdir(parents=True, exist_ok=True)
    (data_dir / "model" / "api-key").write_text(key + "\n")


def module_instance(
    gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory, **instance: Any
) -> Iterator[LiveInstance]:
    """A live instance with the embedded model registered and the fake gateway."""
    data_dir = tmp_path_factory.mktemp("instance") / "data"
    write_model_api_key(data_dir)
    port = free_port()
    live = start_instance(
        make_settings(
            data_dir,
            external_url=f"http://127.0.0.1:{port}",
            gateway_url=gateway.url,
            embedded_model_endpoint=EMBEDDED_ENDPOINT,
            **instance,
        ),
        port,
    )
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def instance(
    gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory, db_backend: Backend
) -> Iterator[LiveInstance]:
    """One instance per module (GitLab 18's gateway API, the default)."""
    yield from module_instance(gateway, tmp_path_factory)


@pytest.fixture(scope="module")
def instance17(
    gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory, db_backend: Backend
) -> Iterator[LiveInstance]:
    """One instance per module that speaks GitLab 17's gateway API (ai_gateway_api)."""
    yield from module_instance(gateway, tmp_path_factory, ai_gateway_api="gitlab17")


@pytest.fixture()
def fresh_gateway(gateway: FakeGateway) -> FakeGateway:
    gateway.reset()
    return gateway


# -- streaming checks shared by every endpoint that relays a gateway stream -------------------


async def stream_in_steps(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    """A gateway stream whose second chunk waits until the client has seen the first one."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    await response.write(b"first ")
    # A buffering relay would never let the client see "first " before the end.
    released = await wait_for(gateway.release, 10)
    await response.write(b"second " if released else b"late ")
    await response.write(b"third")
    await response.write_eof()
    return response


async def stream_forever(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    """A gateway stream that only ends when the instance hangs up on it."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    try:
        for _ in range(1000):
            await response.write(b"tick ")
            await asyncio.sleep(0.02)
    except (ConnectionResetError, asyncio.CancelledError):
        gateway.disconnected.set()
        raise
    return response


def check_relayed_chunk_by_chunk(
    instance: LiveInstance, gateway: FakeGateway, path: str, body: dict[str, Any]
) -> None:
    """POST ``body`` with ``stream: true``: each gateway chunk reaches the client on its own."""
    gateway.handler = stream_in_steps
    with httpx.stream(
        "POST",
        instance.url + path,
        json={**body, "stream": True},
        headers={"PRIVATE-TOKEN": instance.admin_token},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert "content-length" not in response.headers
        chunks = response.iter_raw()
        assert next(chunks) == b"first "
        gateway.release.set()
        rest = b"".join(chunks)
    assert rest == b"second third"
    assert gateway.requests[0].body["stream"] is True


def check_disconnect_cancels_upstream(
    instance: LiveInstance, gateway: FakeGateway, path: str, body: dict[str, Any]
) -> None:
    """A client that hangs up mid-stream makes the instance hang up on the gateway too."""
    gateway.handler = stream_forever
    with httpx.stream(
        "POST",
        instance.url + path,
        json={**body, "stream": True},
        headers={"PRIVATE-TOKEN": instance.admin_token},
        timeout=20,
    ) as response:
        assert next(response.iter_raw()).startswith(b"tick")
    assert gateway.disconnected.wait(5)


@pytest.fixture()
def restore_features(instance: LiveInstance) -> Iterator[None]:
    """Give the module's shared instance its original feature map back after a test."""
    with instance.ctx.sessions() as session:
        saved = [
            (row.feature, row.provider, row.self_hosted_model_id, row.fallback_model_id)
            for row in session.scalars(select(FeatureSetting))
        ]
    yield
    with instance.ctx.sessions() as session, session.begin():
        for row in session.scalars(select(FeatureSetting)):
            session.delete(row)
        session.flush()
        for feature, provider, model_id, fallback_id in saved:
            session.add(
                FeatureSetting(
                    feature=feature,
                    provider=provider,
                    self_hosted_model_id=model_id,
                    fallback_model_id=fallback_id,
                )
            )

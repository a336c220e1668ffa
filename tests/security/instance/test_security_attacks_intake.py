"""Attack cases against the instance's intake: bodies, request heads, ids and user search.

* An anonymous client must get its 401 before the instance reads one byte of its body, on
  every authenticated route (the route table is walked, not a list of examples).
* Every body is read under a limit counted while reading, chunked or not: 413 naming it.
* Huge numeric ids answer GitLab's 404, never a 500.
* A non-admin's user search never matches (or shows) other users' e-mail addresses.
* Real processes: a large chunked body (without and with a token) and a 32 MiB header leave
  the instance's and the gateway's memory where it was.
"""

from __future__ import annotations

import os
import re
import select
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from tests.unit.instance.admin_helpers import ADMIN, Api
from tests.unit.instance.conftest import FakeGateway, LiveInstance

from enclave.common.net import free_port
from enclave.instance.api.deps import PatAuth
from enclave.instance.api.routing import InstanceRoute, _pat_checks, api_routes, check_routes
from enclave.instance.web.session_auth import SessionAuth
from enclave.supervisor import Role

HUGE = "9" * 40  # far past any database integer


# -- raw HTTP on a socket: to see what the server answers before the body is complete --------


def open_request(url: str, method: str, path: str, headers: dict[str, str]) -> socket.socket:
    """Send a request head announcing a chunked body, and its first chunk; not the rest."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
    head += "Content-Type: application/json\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock.sendall(head.encode() + b"\r\n" + b"1\r\n{\r\n")
    return sock


def read_response(sock: socket.socket, timeout: float = 5.0) -> tuple[int, bytes]:
    """Status and raw bytes of the answer (head and as much body as came)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    match = re.match(rb"HTTP/1\.1 (\d{3})", data)
    assert match, f"no HTTP answer: {data[:200]!r}"
    length = re.search(rb"(?i)\r\ncontent-length: (\d+)\r\n", data)
    head_end = data.index(b"\r\n\r\n") + 4
    while length and len(data) - head_end < int(length.group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(match.group(1)), data


def app_of(instance: LiveInstance) -> FastAPI:
    app = instance.server.config.app
    assert isinstance(app, FastAPI)
    return app


def authenticated_routes(
    app: FastAPI, kind: type[PatAuth] | type[SessionAuth] = PatAuth
) -> list[tuple[str, str]]:
    """(method, path with ids filled in) for every route that needs a PAT (or a web session)."""
    found = []
    for route in api_routes(app.routes):
        if any(isinstance(check, kind) for check in _pat_checks(route.dependant)):
            path = re.sub(r"\{[^}]+\}", "1", route.path)
            found += [(method, path) for method in sorted(route.methods)]
    return found


# -- authentication before the body ------------------------------------------------------------


def test_every_instance_route_authenticates_before_it_reads_a_body(
    instance: LiveInstance,
) -> None:
    app = app_of(instance)
    routes = list(api_routes(app.routes))
    assert len(routes) > 30 and all(isinstance(route, InstanceRoute) for route in routes)
    check_routes(app.routes)  # what create_app runs
    with pytest.raises(TypeError, match="must be an InstanceRoute"):
        check_routes([APIRoute("/x", lambda: None)])


def test_anonymous_client_gets_401_before_any_body_byte_is_read_on_every_route(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    """The body never ends; the 401 must come anyway, on every authenticated route."""
    routes = authenticated_routes(app_of(instance))
    assert ("POST", "/api/v4/users") in routes
    assert ("POST", f"{ADMIN}/self_hosted_models") in routes
    assert ("POST", "/api/v4/code_suggestions/completions") in routes
    for method, path in routes:
        with open_request(instance.url, method, path, {}) as sock:
            status, raw = read_response(sock)
        assert status == 401, (method, path, raw[:300])
        assert raw.endswith(b'{"message":"401 Unauthorized"}'), (method, path, raw[-200:])
    assert fresh_gateway.requests == []


def test_anonymous_browser_is_sent_to_sign_in_before_any_body_byte_on_every_web_page(
    instance: LiveInstance,
) -> None:
    """Web pages check the session before the body too: a redirect to the sign-in page, or a
    403 for a form from another site, however long the body would be."""
    routes = authenticated_routes(app_of(instance), SessionAuth)
    assert ("POST", "/admin/models") in routes and ("GET", "/admin") in routes
    assert ("POST", "/-/user_settings/editor_keys") in routes
    for method, path in routes:
        # open_request's Host names no port; the Origin matches it, as a browser's would.
        same_site = instance.url.rsplit(":", 1)[0]
        headers = {"Origin": same_site} if method == "POST" else {}
        with open_request(instance.url, method, path, headers) as sock:
            status, raw = read_response(sock)
        assert status == 303, (method, path, raw[:300])
        assert b"location: /users/sign_in" in raw.lower(), (method, path, raw[:300])
        if method == "POST":
            cross = {"Origin": "http://attacker.example"}
            with open_request(instance.url, method, path, cross) as sock:
                status, raw = read_response(sock)
            assert status == 403, (method, path, raw[:300])


def test_non_admin_gets_403_before_the_body_of_an_admin_route_is_read(
    instance: LiveInstance,
) -> None:
    token = instance.new_token(("api",))
    for path in ("/api/v4/users", f"{ADMIN}/self_hosted_models"):
        with open_request(instance.url, "POST", path, {"PRIVATE-TOKEN": token}) as sock:
            status, raw = read_response(sock)
        assert status == 403, raw
        assert b"for administrators" in raw


# -- body limits, counted while reading ----------------------------------------------------------


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A JSON-ish body of ``total`` bytes, produced lazily (never held whole)."""
    yield b'{"username": "'
    sent = 0
    while sent < total:
        yield b"a" * size
        sent += size
    yield b'"}'


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
@pytest.mark.parametrize(
    ("path", "limit_text"),
    [
        ("/api/v4/users", "64 KiB, the limit of this endpoint (ENCLAVE_INSTANCE__MAX_BODY_BYTES)"),
        (f"{ADMIN}/self_hosted_models", "64 KiB"),
        ("/api/v4/ai/openai/direct_access", "16 KiB, the limit of this endpoint;"),
    ],
)
def test_admin_body_over_its_limit_is_refused_with_413_naming_it(
    instance: LiveInstance, path: str, limit_text: str, chunked: bool
) -> None:
    body: Any = chunks(1024 * 1024) if chunked else b"".join(chunks(1024 * 1024))
    response = httpx.post(
        instance.url + path,
        content=body,
        headers={"PRIVATE-TOKEN": instance.admin_token, "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413, response.text
    message = response.json()["message"]
    assert message.startswith("413 Request Entity Too Large - the request body is over ")
    assert limit_text in message
    assert response.headers["x-gitlab-error-origin"] == "monolith"


def test_ai_text_routes_keep_the_8_mib_limit_and_code_suggestions_600_kb(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    headers = {"PRIVATE-TOKEN": instance.admin_token, "Content-Type": "application/json"}
    for path, size, text in (
        ("/api/v4/chat/completions", 9 * 1024 * 1024, "over 8 MiB"),
        ("/api/v4/code_suggestions/completions", 700_000, "over 600 KiB"),
    ):
        response = httpx.post(
            instance.url + path, content=chunks(size), headers=headers, timeout=30
        )
        assert response.status_code == 413, (path, response.text)
        assert text in response.json()["message"]
    # Under the admin limit but over 64 KiB: AI text routes accept it (422/400 for content).
    response = httpx.post(
        instance.url + "/api/v4/chat/completions",
        json={"content": "x" * 200_000},
        headers=headers,
        timeout=30,
    )
    assert response.status_code != 413
    assert fresh_gateway.requests == []


def test_admin_body_limit_is_a_setting(
    live_instance_factory: Callable[..., LiveInstance],
) -> None:
    live = live_instance_factory(max_body_bytes=2048)
    api = Api(live)
    small = api.post("/api/v4/users", {"username": "small", "email": "small@example.com"})
    assert small.status_code == 201, small.text
    big = api.post("/api/v4/users", {"username": "big", "name": "n" * 3000})
    assert big.status_code == 413
    assert "over 2 KiB" in big.json()["message"]


# -- ids and search -------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [HUGE, str(2**31), str(2**63), "0", "9" * 5000])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v4/users/{id}"),
        ("POST", "/api/v4/users/{id}/block"),
        ("POST", "/api/v4/users/{id}/unblock"),
        ("POST", "/api/v4/users/{id}/personal_access_tokens"),
        ("GET", "/api/v4/personal_access_tokens/{id}"),
        ("DELETE", "/api/v4/personal_access_tokens/{id}"),
        ("GET", f"{ADMIN}/self_hosted_models/{{id}}"),
        ("PUT", f"{ADMIN}/self_hosted_models/{{id}}"),
        ("PATCH", f"{ADMIN}/self_hosted_models/{{id}}"),
        ("DELETE", f"{ADMIN}/self_hosted_models/{{id}}"),
        ("POST", f"{ADMIN}/self_hosted_models/{{id}}/test"),
    ],
)
def test_huge_numeric_ids_answer_404_not_500(
    instance: LiveInstance, method: str, path: str, number: str
) -> None:
    body = {"name": "t", "scopes": ["api"]} if "personal_access_tokens" in path else {}
    response = Api(instance).request(
        method, path.format(id=number), json=body if method in ("POST", "PUT", "PATCH") else None
    )
    assert response.status_code == 404, response.text[:300]
    assert response.json()["message"].startswith("404 Not Found - ")


@pytest.mark.parametrize(
    "path",
    [
        f"/api/v4/personal_access_tokens?user_id={HUGE}",
        f"{ADMIN}/audit_events?author_id={HUGE}",
        f"/api/v4/audit_events?author_id={HUGE}",
        f"/api/v4/users?page={HUGE}",
        f"/api/v4/users?page={'9' * 5000}",
    ],
)
def test_huge_numbers_in_filters_and_pages_give_an_empty_list(
    instance: LiveInstance, path: str
) -> None:
    response = Api(instance).get(path)
    assert response.status_code == 200, response.text
    assert response.json() == []


def test_huge_model_id_in_a_feature_setting_is_a_400_not_a_500(instance: LiveInstance) -> None:
    response = Api(instance).put(
        f"{ADMIN}/feature_settings/duo_chat",
        {"provider": "self_hosted", "self_hosted_model_id": int(HUGE)},
    )
    assert response.status_code == 400, response.text
    assert "self_hosted_model_id" in response.json()["errors"]


def test_non_admin_search_never_matches_other_users_email(instance: LiveInstance) -> None:
    admin = Api(instance)
    created = admin.post(
        "/api/v4/users",
        {"username": "quietperson", "name": "Quiet Person", "email": "hidden-x7@private.example"},
    )
    assert created.status_code == 201, created.text
    reader = Api(instance, instance.new_token(("read_api",)))
    assert reader.get("/api/v4/users", params={"search": "hidden-x7"}).json() == []
    assert reader.get("/api/v4/users", params={"search": "private.example"}).json() == []
    by_name = reader.get("/api/v4/users", params={"search": "quiet"}).json()
    assert [user["username"] for user in by_name] == ["quietperson"]
    assert "email" not in by_name[0]
    # Administrators still find users by e-mail, and see it.
    found = admin.get("/api/v4/users", params={"search": "hidden-x7"}).json()
    assert [user["email"] for user in found] == ["hidden-x7@private.example"]


# -- real processes: memory under a large body and a huge header ----------------------------------

BODY_BYTES = 128 * 1024 * 1024
HEADER_BYTES = 32 * 1024 * 1024
# The peak RSS (VmHWM) may grow by less than this while 128 MiB of body or 32 MiB of header
# arrive; buffering either would grow it by more than the attack's size.
RSS_GROWTH_BOUND_KIB = 24 * 1024


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def push_chunked_body(
    url: str, path: str, headers: dict[str, str], total: int
) -> tuple[int, bool, int]:
    """Send ``total`` bytes of chunked body, generated lazily, like an attacker who does not
    stop at the answer; (status, whether the answer came before the body ended, bytes sent)."""
    with open_request(url, "POST", path, headers) as sock:
        piece = b"a" * (256 * 1024)
        frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        sent, answered_early = 0, False
        try:
            while sent < total:
                if not answered_early:
                    answered_early = bool(select.select([sock], [], [], 0)[0])
                sock.sendall(frame)
                sent += len(piece)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # a server may close once it has answered
        return read_response(sock, timeout=15)[0], answered_early, sent


def push_huge_header(url: str, total: int) -> tuple[int, bytes]:
    """A request whose one header grows to ``total`` bytes unless the answer comes first."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET /-/liveness HTTP/1.1\r\nHost: {host}\r\nX-Big: ".encode())
        piece = b"a" * (256 * 1024)
        sent = 0
        try:
            while sent < total:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
                sock.sendall(piece)
                sent += len(piece)
            else:
                sock.sendall(b"\r\n\r\n")
        except OSError:
            pass
        return read_response(sock, timeout=15)


def start_role(role: Role, log_dir: Path, env: dict[str, str]) -> Role:
    role.start(log_dir, env)
    deadline = time.monotonic() + 60
    while True:
        assert role.alive(), f"{role.name} died:\n{role.log_tail()}"
        try:
            if httpx.get(role.ready_url, timeout=1).status_code == 200:
                return role
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{role.name} did not start:\n{role.log_tail()}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Role, Role, str]]:
    """A real instance process and a real gateway process (``python -m enclave ...``)."""
    data_dir = tmp_path_factory.mktemp("intake") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update({"ENCLAVE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"})
    instance_port, gateway_port = free_port(), free_port()
    instance = Role(
        "instance",
        ["instance", "--port", str(instance_port)],
        f"http://127.0.0.1:{instance_port}/-/liveness",
        env={"ENCLAVE_INSTANCE__GATEWAY_URL": f"http://127.0.0.1:{gateway_port}"},
    )
    gateway = Role(
        "gateway",
        ["gateway", "--port", str(gateway_port)],
        f"http://127.0.0.1:{gateway_port}/monitoring/healthz",
        env={"ENCLAVE_GATEWAY__ISSUER_URL": f"http://127.0.0.1:{instance_port}"},
    )
    try:
        start_role(instance, data_dir / "logs", env)
        start_role(gateway, data_dir / "logs", env)
        token = (data_dir / "admin-token.txt").read_text().strip()
        yield instance, gateway, token
    finally:
        gateway.stop()
        instance.stop()


def base_url(role: Role) -> str:
    match = re.match(r"http://[^/]+", role.ready_url)
    assert match
    return match.group(0)


def pid_of(role: Role) -> int:
    assert role.process is not None
    return role.process.pid


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("with_token", [False, True], ids=["anonymous", "admin-token"])
@pytest.mark.parametrize("path", ["/api/v4/users", f"{ADMIN}/self_hosted_models"])
def test_large_chunked_body_leaves_instance_memory_alone(
    processes: tuple[Role, Role, str], path: str, with_token: bool
) -> None:
    instance, _, token = processes
    pid = pid_of(instance)
    rss_before, peak_before = memory_kib(pid)
    headers = {"PRIVATE-TOKEN": token} if with_token else {}
    status, answered_early, sent = push_chunked_body(base_url(instance), path, headers, BODY_BYTES)
    rss_after, peak_after = memory_kib(pid)
    print(
        f"instance {path} token={with_token}: {sent >> 20} MiB sent, status {status}, "
        f"RSS {rss_before >> 10} → {rss_after >> 10} MiB, peak {peak_before >> 10} → "
        f"{peak_after >> 10} MiB"
    )
    assert status == (413 if with_token else 401)
    assert answered_early  # the answer did not wait for the body
    assert peak_after - max(peak_before, rss_before) < RSS_GROWTH_BOUND_KIB, (
        f"RSS {rss_before} → {rss_after} KiB, peak {peak_before} → {peak_after} KiB"
    )
    assert instance.alive()


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("role_name", ["instance", "gateway"])
def test_32_mib_header_is_refused_with_431_and_leaves_memory_alone(
    processes: tuple[Role, Role, str], role_name: str
) -> None:
    instance, gateway, _ = processes
    role = instance if role_name == "instance" else gateway
    pid = pid_of(role)
    rss_before, peak_before = memory_kib(pid)
    status, raw = push_huge_header(base_url(role), HEADER_BYTES)
    rss_after, peak_after = memory_kib(pid)
    print(
        f"{role_name} 32 MiB header: status {status}, RSS {rss_before >> 10} → "
        f"{rss_after >> 10} MiB, peak {peak_before >> 10} → {peak_after >> 10} MiB"
    )
    assert status == 431, raw[:300]
    key = b'"message"' if role_name == "instance" else b'"detail"'
    assert key in raw and b"over 16384 bytes" in raw, raw
    assert peak_after - max(peak_before, rss_before) < RSS_GROWTH_BOUND_KIB, (
        f"RSS {rss_before} → {rss_after} KiB, peak {peak_before} → {peak_after} KiB"
    )
    # Still serving.
    assert httpx.get(role.ready_url, timeout=5).status_code == 200


def test_too_many_headers_are_refused_with_431_by_the_instance_process(
    processes: tuple[Role, Role, str],
) -> None:
    instance, _, _ = processes
    headers = {f"X-Extra-{n}": "1" for n in range(150)}
    response = httpx.get(instance.ready_url, headers=headers, timeout=10)
    assert response.status_code == 431
    assert "more than 100 headers" in response.json()["message"]
    assert "ENCLAVE_INSTANCE__MAX_HEADERS" in response.json()["message"]
    ok = httpx.get(instance.ready_url, headers=dict(list(headers.items())[:50]), timeout=10)
    assert ok.status_code == 200

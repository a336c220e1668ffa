"""The web UI over HTTP (no browser): sign-in, sessions, CSRF, the admin check and what pages
may never show. The browser story is in tests/browser/."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy import select

from enclave.instance.db.models import AuditEvent, SelfHostedModel, WebSession
from tests.unit.instance.conftest import (
    MODEL_API_KEY,
    Backend,
    FakeGateway,
    LiveInstance,
    module_instance,
)

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def live(
    gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory, db_backend: Backend
) -> Iterator[LiveInstance]:
    # A short ban window: the ban test below must not lock the other tests out for long.
    yield from module_instance(
        gateway, tmp_path_factory, failed_auth_max_retry=4, failed_auth_ban_time_s=2
    )


def admin_password(live: LiveInstance) -> str:
    return live.settings.admin_password_file.read_text().strip()


def client(live: LiveInstance) -> httpx.Client:
    return httpx.Client(base_url=live.url, timeout=30, follow_redirects=False)


def origin(live: LiveInstance) -> dict[str, str]:
    return {"Origin": live.url}


def sign_in(c: httpx.Client, live: LiveInstance, username: str, password: str) -> httpx.Response:
    form = c.get("/users/sign_in")
    token = re.search(r'name="sign_in_token" value="([^"]+)"', form.text)
    assert token is not None
    return c.post(
        "/users/sign_in",
        data={"username": username, "password": password, "sign_in_token": token[1]},
        headers=origin(live),
    )


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None, html
    return found[1]


def regular_user(live: LiveInstance, c: httpx.Client, name: str) -> None:
    """Create ``name`` (password PASSWORD) through the admin pages."""
    page = c.get("/admin/users")
    response = c.post(
        "/admin/users",
        data={
            "csrf_token": csrf_of(page.text),
            "username": name,
            "email": f"{name}@example.com",
            "password": PASSWORD,
        },
        headers=origin(live),
    )
    assert response.status_code == 303, response.text


def test_root_and_admin_send_anonymous_browsers_to_sign_in(live: LiveInstance) -> None:
    with client(live) as c:
        assert c.get("/").headers["location"] == "/users/sign_in"
        response = c.get("/admin/models")
        assert response.status_code == 303
        assert response.headers["location"] == "/users/sign_in?return_to=/admin/models"


def test_sign_in_sets_a_safe_session_cookie_and_stores_only_its_digest(live: LiveInstance) -> None:
    with client(live) as c:
        response = sign_in(c, live, "root", admin_password(live))
        assert response.status_code == 303 and response.headers["location"] == "/admin"
        cookie = next(h for h in response.headers.get_list("set-cookie") if "enclave_session=" in h)
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain http on loopback
        value = c.cookies["enclave_session"]
        with live.ctx.sessions() as session:
            digests = session.scalars(select(WebSession.session_digest)).all()
        assert value not in digests and len(digests) >= 1
        dashboard = c.get("/admin")
        assert dashboard.status_code == 200
        assert "Dashboard" in dashboard.text
        assert dashboard.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in dashboard.headers["content-security-policy"]


def test_wrong_password_is_refused_after_a_pause(live: LiveInstance) -> None:
    with client(live) as c:
        started = time.monotonic()
        response = sign_in(c, live, "root", "not the password at all")
        assert response.status_code == 401
        assert "Wrong username or password." in response.text
        assert time.monotonic() - started >= 1.0
        assert "enclave_session" not in c.cookies
        unknown = sign_in(c, live, "nobody-here", "not the password at all")
        assert unknown.status_code == 401 and "Wrong username or password." in unknown.text


def test_repeated_failures_ban_the_address_even_for_the_right_password(
    live: LiveInstance,
) -> None:
    with client(live) as c:
        for _ in range(4):
            sign_in(c, live, "root", "wrong-password-again")
        banned = sign_in(c, live, "root", admin_password(live))
        assert banned.status_code == 429
        assert "Too many failed authentication attempts" in banned.text
        time.sleep(2.2)  # failed_auth_ban_time_s
        assert sign_in(c, live, "root", admin_password(live)).status_code == 303


def test_sign_in_form_needs_its_token_and_this_site(live: LiveInstance) -> None:
    with client(live) as c:
        c.get("/users/sign_in")
        data = {"username": "root", "password": admin_password(live), "sign_in_token": "forged"}
        assert c.post("/users/sign_in", data=data, headers=origin(live)).status_code == 403
        cross = c.post("/users/sign_in", data=data, headers={"Origin": "https://evil.example"})
        assert cross.status_code == 403 and "another site" in cross.text


def test_forms_without_the_csrf_token_or_from_another_site_are_refused(
    live: LiveInstance,
) -> None:
    with client(live) as c:
        sign_in(c, live, "root", admin_password(live))
        page = c.get("/admin/models/new")
        token = csrf_of(page.text)
        body = {
            "name": "csrf-probe",
            "model": "general",
            "provider": "api",
            "endpoint": "http://127.0.0.1:9/v1",
            "identifier": "custom_openai/x",
        }
        missing = c.post("/admin/models", data=body, headers=origin(live))
        assert missing.status_code == 403 and "security token" in missing.text
        wrong = c.post("/admin/models", data={**body, "csrf_token": "x" * 43}, headers=origin(live))
        assert wrong.status_code == 403
        cross = c.post(
            "/admin/models",
            data={**body, "csrf_token": token},
            headers={"Origin": "http://attacker.example"},
        )
        assert cross.status_code == 403 and "another site" in cross.text
        no_origin = c.post("/admin/models", data={**body, "csrf_token": token})
        assert no_origin.status_code == 403
        with live.ctx.sessions() as session:
            assert (
                session.scalar(select(SelfHostedModel).where(SelfHostedModel.name == "csrf-probe"))
                is None
            )
        ok = c.post("/admin/models", data={**body, "csrf_token": token}, headers=origin(live))
        assert ok.status_code == 303


def test_a_regular_user_is_refused_the_admin_pages_but_has_a_profile(live: LiveInstance) -> None:
    with client(live) as admin:
        sign_in(admin, live, "root", admin_password(live))
        regular_user(live, admin, "dev1")
    with client(live) as c:
        response = sign_in(c, live, "dev1", PASSWORD)
        assert response.headers["location"] == "/-/user_settings/editor_keys"
        for path in ("/admin", "/admin/models", "/admin/users", "/admin/audit", "/admin/keys"):
            refused = c.get(path)
            assert refused.status_code == 403, path
            assert "for administrators" in refused.text
        assert c.get("/-/user_settings/editor_keys").status_code == 200
        assert c.get("/-/user_settings/personal_access_tokens").status_code == 200
        assert "No requests yet." in c.get("/-/user_settings/usage").text


def test_no_secret_is_ever_rendered(live: LiveInstance) -> None:
    """The model API key, the admin token and password, session ids: in no page."""
    with client(live) as c:
        sign_in(c, live, "root", admin_password(live))
        secrets = [
            MODEL_API_KEY,
            live.admin_token,
            admin_password(live),
            c.cookies["enclave_session"],
        ]
        for path in (
            "/admin",
            "/admin/models",
            "/admin/models/1/edit",
            "/admin/features",
            "/admin/settings",
            "/admin/users",
            "/admin/users/1",
            "/admin/keys",
            "/admin/audit",
            "/-/user_settings/editor_keys",
            "/-/user_settings/personal_access_tokens",
            "/-/user_settings/usage",
            "/admin/usage",
        ):
            html = c.get(path)
            assert html.status_code == 200, path
            for secret in secrets:
                assert secret not in html.text, path


def test_a_new_token_is_shown_once_and_actions_are_audited(live: LiveInstance) -> None:
    with client(live) as c:
        sign_in(c, live, "root", admin_password(live))
        page = c.get("/-/user_settings/personal_access_tokens")
        created = c.post(
            "/-/user_settings/personal_access_tokens",
            data={"csrf_token": csrf_of(page.text), "name": "web", "scopes": "ai_features"},
            headers=origin(live),
        )
        assert created.status_code == 200
        token = re.search(r"glpat-[A-Za-z0-9_-]+", created.text)
        assert token is not None
        assert token[0] not in c.get("/-/user_settings/personal_access_tokens").text
        assert httpx.get(
            live.url + "/api/v4/user", headers={"PRIVATE-TOKEN": token[0]}, timeout=30
        ).status_code in (200, 403)  # a valid token (ai_features cannot read the user)
        with live.ctx.sessions() as session:
            actions = set(session.scalars(select(AuditEvent.action)).all())
        assert {"user_signed_in", "personal_access_token_created"} <= actions


def test_sign_out_ends_the_session(live: LiveInstance) -> None:
    with client(live) as c:
        sign_in(c, live, "root", admin_password(live))
        cookie = c.cookies["enclave_session"]
        page = c.get("/admin")
        out = c.post(
            "/users/sign_out", data={"csrf_token": csrf_of(page.text)}, headers=origin(live)
        )
        assert out.status_code == 303
    with client(live) as again:
        again.cookies.set("enclave_session", cookie)
        assert again.get("/admin").status_code == 303  # the old cookie signs no one in


def test_bad_input_answers_a_precise_4xx_page(live: LiveInstance) -> None:
    with client(live) as c:
        sign_in(c, live, "root", admin_password(live))
        assert c.get("/admin/models/99999999999/edit").status_code == 404
        bad = c.get("/admin/audit", params={"action": "drop_tables"})
        assert bad.status_code == 400 and "unknown action" in bad.text
        page = c.get("/admin/settings")
        response = c.post(
            "/admin/settings",
            data={"csrf_token": csrf_of(page.text), "ai_gateway_timeout_seconds": "5"},
            headers=origin(live),
        )
        assert response.status_code == 400 and "60" in response.text
        huge = c.post(
            "/admin/settings",
            content=b"a=" + b"x" * 70_000,
            headers={**origin(live), "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert huge.status_code == 413


def test_the_session_cookie_is_secure_behind_https(
    live_instance_factory: Callable[..., LiveInstance],
) -> None:
    """An instance whose external URL is https marks its cookies Secure."""
    instance = live_instance_factory(external_url="https://enclave.example")
    with client(instance) as c:
        form = c.get("/users/sign_in")
        sign_in_cookie = form.headers["set-cookie"]
        assert sign_in_cookie.startswith("enclave_sign_in=") and "Secure" in sign_in_cookie
        token = re.search(r'name="sign_in_token" value="([^"]+)"', form.text)
        assert token is not None
        # httpx keeps Secure cookies for https; a browser behind the TLS proxy sends it back.
        c.cookies.set("enclave_sign_in", token[1])
        response = c.post(
            "/users/sign_in",
            data={
                "username": "root",
                "password": admin_password(instance),
                "sign_in_token": token[1],
            },
            headers=origin(instance),
        )
        assert response.status_code == 303
        cookies = response.headers.get_list("set-cookie")
        session_cookie = next(h for h in cookies if h.startswith("enclave_session="))
        assert "Secure" in session_cookie and "HttpOnly" in session_cookie


def post_form(
    c: httpx.Client, live: LiveInstance, page: str, action: str, **data: str
) -> httpx.Response:
    token = csrf_of(c.get(page).text)
    return c.post(action, data={"csrf_token": token, **data}, headers=origin(live))


def test_delete_guard_compatibility_and_key_rotation_from_the_pages(live: LiveInstance) -> None:
    with client(live) as c:
        sign_in(c, live, "root", admin_password(live))
        # The embedded model serves features: deleting it is refused, naming them.
        refused = post_form(c, live, "/admin/models", "/admin/models/1/delete")
        assert refused.status_code == 409
        assert "code_completions" in refused.text
        # A model of a family that cannot summarize reviews is not offered there, and refused.
        created = post_form(
            c,
            live,
            "/admin/models/new",
            "/admin/models",
            name="codestral-like",
            model="codestral",
            provider="api",
            endpoint="http://127.0.0.1:9/v1",
            identifier="custom_openai/claude",
        )
        assert created.status_code == 303, created.text
        features = c.get("/admin/features").text

        def row_of(feature: str) -> str:
            row = features[features.index(f'id="feature-{feature}"') :]
            return row[: row.index("</tr>")]

        assert "codestral-like" not in row_of("summarize_review")
        assert "codestral-like" in row_of("code_completions")
        with live.ctx.sessions() as session:
            model = session.scalar(
                select(SelfHostedModel).where(SelfHostedModel.name == "codestral-like")
            )
            assert model is not None
            model_id = model.id
        incompatible = post_form(
            c,
            live,
            "/admin/features",
            "/admin/features/summarize_review",
            provider="self_hosted",
            model_id=str(model_id),
        )
        assert incompatible.status_code == 400
        assert "incompatible with the Code review summary feature" in incompatible.text
        # Rotate the signing key: published at once, pending until its activation, audited.
        rotated = post_form(c, live, "/admin/keys", "/admin/keys/rotate", activate_after_s="600")
        assert rotated.status_code == 303
        keys = c.get("/admin/keys").text
        assert "pending" in keys and "active" in keys
        again = post_form(c, live, "/admin/keys", "/admin/keys/rotate", activate_after_s="600")
        assert again.status_code == 409 and "waiting to become active" in again.text
        bad = post_form(c, live, "/admin/keys", "/admin/keys/rotate", activate_after_s="soon")
        assert bad.status_code == 400
        with live.ctx.sessions() as session:
            actions = session.scalars(select(AuditEvent.action)).all()
        assert "signing_key_rotated" in actions


def test_the_usage_page_offers_fixed_periods(live: LiveInstance) -> None:
    with client(live) as c:
        sign_in(c, live, "root", admin_password(live))
        page = c.get("/admin/usage")
        assert page.status_code == 200
        assert "no requests in this period" in page.text  # nothing recorded on this instance
        assert c.get("/admin/usage", params={"days": "30"}).status_code == 200
        bad = c.get("/admin/usage", params={"days": "5"})
        assert bad.status_code == 400 and "choose one of 1, 7, 30, 90" in bad.text


def test_a_trusted_proxys_https_makes_cookies_secure_and_nobody_elses(
    live_instance_factory: Callable[..., LiveInstance],
) -> None:
    proxied = live_instance_factory(trusted_proxies=["127.0.0.1/32"])
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.1.2.3"}
    form = httpx.get(proxied.url + "/users/sign_in", headers=headers, timeout=30)
    assert "Secure" in form.headers["set-cookie"]
    direct = live_instance_factory()
    form = httpx.get(direct.url + "/users/sign_in", headers=headers, timeout=30)
    assert "Secure" not in form.headers["set-cookie"]

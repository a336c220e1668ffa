"""The administration story of issue 13 in a real browser (Debian's chromium, Playwright).

An administrator signs in, adds a model, tests its connection (one passing, one failing with
the message on the page), assigns it to code completion, creates a user and a PAT for them;
a completion made with that PAT is answered by that model. Refusals: wrong password, a
non-admin on admin pages, a form without its CSRF token. No page ever holds a secret (model
API keys, the admin token and password; a new PAT or editor key only on the page that shows it
once). A regular user creates an editor key, uses it with the ``openai`` client, revokes it,
and the next call is refused. The completion shows up in usage.
The run writes screenshots of the main pages to docs/screenshots/ (the README shows them).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from enclave.common.net import free_port
from enclave.model.tiny_gguf import TINY_ANSWER
from tests.browser.conftest import SCREENSHOTS, VIEWPORT
from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

MODEL_NAME = "web-tiny"
MODEL_IDENTIFIER = "custom_openai/web-tiny"
USER = "alice"
USER_PASSWORD = "correct-horse-battery-42"
COMPLETION = {
    "current_file": {
        "file_name": "calc.py",
        "content_above_cursor": "def add(a, b):\n    ",
        "content_below_cursor": "\n",
    },
    "intent": "completion",
    "stream": False,
}
REVOCATION_BOUND_S = 20.0
USAGE_BOUND_S = 20.0


class Pages:
    """Every page HTML the test saw, to check for secrets at the end."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def record(self, page: Page) -> None:
        self.seen.append((page.url, page.content()))


@pytest.fixture(scope="module")
def seen() -> Pages:
    return Pages()


def new_context(browser: Browser) -> BrowserContext:
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    context.set_default_timeout(60_000)
    return context


@pytest.fixture(scope="module")
def admin_page(browser: Browser, web_stack: Stack) -> Iterator[Page]:
    context = new_context(browser)
    try:
        yield context.new_page()
    finally:
        context.close()


def shoot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)


def admin_password(stack: Stack) -> str:
    return (stack.data_dir / "admin-password.txt").read_text().strip()


def sign_in(page: Page, stack: Stack, username: str, password: str) -> None:
    page.goto(f"{stack.instance_url}/users/sign_in")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button:has-text('Sign in')")


def test_wrong_password_is_refused(browser: Browser, web_stack: Stack, seen: Pages) -> None:
    context = new_context(browser)
    page = context.new_page()
    sign_in(page, web_stack, "root", "surely-not-the-password")
    expect(page.locator(".error")).to_have_text("Wrong username or password.")
    assert page.url.endswith("/users/sign_in")
    shoot(page, "sign-in")
    seen.record(page)
    page.goto(f"{web_stack.instance_url}/admin")
    assert "/users/sign_in" in page.url  # still signed out
    context.close()


def test_admin_adds_tests_and_assigns_a_model_then_a_pat_completion_uses_it(
    admin_page: Page, web_stack: Stack, seen: Pages
) -> None:
    page, stack = admin_page, web_stack
    sign_in(page, stack, "root", admin_password(stack))
    expect(page.locator("h1")).to_have_text("Dashboard")
    seen.record(page)

    # Add a model: the embedded llama.cpp server under a new name and identifier.
    page.goto(f"{stack.instance_url}/admin/models/new")
    page.fill("input[name=name]", MODEL_NAME)
    page.select_option("select[name=model]", "general")
    page.fill("input[name=endpoint]", stack.model_url)
    page.fill("input[name=identifier]", MODEL_IDENTIFIER)
    page.fill("input[name=api_token]", stack.model_api_key)
    page.click("button:has-text('Add model')")
    expect(page.locator(".notice")).to_have_text("Model added.")
    row = page.locator("tr", has_text=MODEL_NAME)
    expect(row).to_contain_text("set")  # the key: only whether there is one
    seen.record(page)

    # Test connection: passes.
    row.locator("button:has-text('Test connection')").click()
    result = page.locator("#test-result")
    expect(result).to_contain_text(f"Test connection of {MODEL_NAME}: passed")
    seen.record(page)

    # A second model with a wrong key: the failure and the check's exact message are shown.
    page.goto(f"{stack.instance_url}/admin/models/new")
    page.fill("input[name=name]", "wrong-key")
    page.fill("input[name=endpoint]", stack.model_url)
    page.fill("input[name=identifier]", "custom_openai/wrong")
    page.fill("input[name=api_token]", "not-the-key-0123456789")
    page.click("button:has-text('Add model')")
    page.locator("tr", has_text="wrong-key").locator("button:has-text('Test connection')").click()
    expect(result).to_contain_text("Test connection of wrong-key: failed")
    expect(result).to_contain_text("refused the API key")
    shoot(page, "models")
    seen.record(page)

    # And an unreachable one: the dashboard shows its last error.
    port = free_port()
    page.goto(f"{stack.instance_url}/admin/models/new")
    page.fill("input[name=name]", "unreachable")
    page.fill("input[name=endpoint]", f"http://127.0.0.1:{port}/v1")
    page.fill("input[name=identifier]", "custom_openai/nothing")
    page.click("button:has-text('Add model')")
    page.locator("tr", has_text="unreachable").locator("button:has-text('Test connection')").click()
    expect(result).to_contain_text("Test connection of unreachable: failed")
    page.goto(f"{stack.instance_url}/admin")
    expect(page.locator("tr", has_text="unreachable")).to_contain_text("failed")
    shoot(page, "dashboard")
    seen.record(page)

    # Assign it to code completion; the feature offers only compatible models.
    page.goto(f"{stack.instance_url}/admin/features")
    feature = page.locator("#feature-code_completions")
    feature.locator("select[name=provider]").select_option("self_hosted")
    feature.locator("select[name=model_id]").select_option(label=MODEL_NAME)
    feature.locator("button:has-text('Save')").click()
    expect(page.locator(".notice")).to_have_text("Feature setting saved.")
    expect(page.locator("#feature-code_completions")).to_contain_text(MODEL_NAME)
    shoot(page, "features")
    seen.record(page)

    # Create a user (with a password, for the editor-key story) and a PAT for them.
    page.goto(f"{stack.instance_url}/admin/users")
    page.fill("input[name=username]", USER)
    page.fill("input[name=email]", f"{USER}@example.com")
    page.fill("input[name=password]", USER_PASSWORD)
    page.click("button:has-text('Create user')")
    expect(page.locator(".notice")).to_have_text("User created.")
    page.fill("input[name=name]", "ide")
    page.click("button:has-text('Create token')")
    token = page.locator("#new-token code").inner_text().strip()
    assert re.fullmatch(r"glpat-[A-Za-z0-9_-]{20,}", token)
    seen.record(page)
    page.goto(page.url.removesuffix("/tokens"))  # shown once: not on the page any more
    assert token not in page.content()
    shoot(page, "user")  # after: no token in a committed picture, even a test stack's
    expect(page.locator("tbody tr", has_text="ide")).to_have_count(1)

    # A completion made with that PAT is answered by that model.
    response = httpx.post(
        f"{stack.instance_url}/api/v4/code_suggestions/completions",
        json=COMPLETION,
        headers={"PRIVATE-TOKEN": token},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == MODEL_IDENTIFIER
    assert [choice["text"] for choice in body["choices"]] == [TINY_ANSWER]

    # The completion shows up in usage (flushed every second here), by user and by model.
    deadline = time.monotonic() + USAGE_BOUND_S
    while True:
        page.goto(f"{stack.instance_url}/admin/usage?days=1")
        by_user = page.locator("#usage-by-user tbody tr", has_text=USER)
        if by_user.count() > 0:
            break
        assert time.monotonic() < deadline, "the completion never showed up in usage"
        time.sleep(0.5)
    expect(by_user.filter(has_text="code_completions")).to_have_count(1)
    expect(page.locator("#usage-by-model tbody tr", has_text="code_completions")).to_contain_text(
        MODEL_NAME
    )
    expect(page.locator("svg.chart rect")).to_have_count(1)
    shoot(page, "usage")
    seen.record(page)

    # The audit log shows what was done, filterable by action.
    page.goto(f"{stack.instance_url}/admin/audit?action=self_hosted_model_created")
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(4)  # the embedded model (bootstrap) and the three above
    for name in (MODEL_NAME, "wrong-key", "unreachable"):
        expect(page.locator("tbody")).to_contain_text(f"Self-hosted model {name} created")
    assert all("self_hosted_model_created" in text for text in rows.all_inner_texts())
    page.goto(f"{stack.instance_url}/admin/audit")
    expect(page.locator("tbody")).to_contain_text("Feature code_completions changed")
    shoot(page, "audit")
    seen.record(page)
    for path in ("/admin/settings", "/admin/keys", "/admin/users"):
        page.goto(stack.instance_url + path)
        seen.record(page)


def test_a_form_without_its_csrf_token_is_refused(admin_page: Page, web_stack: Stack) -> None:
    page = admin_page
    page.goto(f"{web_stack.instance_url}/admin/settings")
    # The page's own origin and session cookie, everything but the form's token: a form
    # built on the page (the CSP lets no script fetch) and submitted.
    with page.expect_navigation():
        page.evaluate(
            """() => {
                const form = document.createElement('form');
                form.method = 'post';
                form.action = '/admin/settings';
                const field = document.createElement('input');
                field.name = 'ai_gateway_timeout_seconds';
                field.value = '120';
                form.appendChild(field);
                document.body.appendChild(form);
                form.submit();
            }"""
        )
    expect(page.locator(".error")).to_contain_text("security token is missing")
    page.goto(f"{web_stack.instance_url}/admin/settings")
    assert "120" not in page.locator("input[name=ai_gateway_timeout_seconds]").input_value()


def test_a_regular_user_is_refused_admin_pages_and_manages_an_editor_key(
    browser: Browser, web_stack: Stack, seen: Pages
) -> None:
    stack = web_stack
    context = new_context(browser)
    page = context.new_page()
    sign_in(page, stack, USER, USER_PASSWORD)
    expect(page.locator("h1")).to_have_text("Editor keys")
    page.goto(f"{stack.instance_url}/admin/models")
    expect(page.locator(".error")).to_contain_text("This page is for administrators")
    seen.record(page)
    # Their own usage: the completion made with their PAT in the admin story.
    page.goto(f"{stack.instance_url}/-/user_settings/usage")
    expect(page.locator("#own-usage tbody tr", has_text="code_completions")).to_contain_text(
        MODEL_NAME
    )
    seen.record(page)

    # Create an editor key for chat and code completion.
    page.goto(f"{stack.instance_url}/-/user_settings/editor_keys")
    page.fill("input[name=name]", "laptop")
    page.fill("input[name=expires_in_days]", "30")
    page.click("button:has-text('Create editor key')")
    key = page.locator("#editor-key").inner_text().strip()
    assert key.count(".") == 2  # a JWT
    expect(page.locator("pre").first).to_contain_text(key)  # ready-to-paste client config
    base_url = re.search(r'base_url="([^"]+)"', page.locator("pre").first.inner_text())
    assert base_url is not None and base_url[1] == f"{stack.gateway_url}/v1"
    page.goto(page.url)
    assert key not in page.content()
    shoot(page, "editor-keys")
    seen.record(page)

    # The openai client with the key.
    client = openai.OpenAI(base_url=base_url[1], api_key=key, timeout=120, max_retries=0)
    answer = client.completions.create(model="code_completions", prompt="def add(a, b):\n    ")
    assert answer.choices[0].text
    assert {m.id for m in client.models.list()} == {"duo_chat", "code_completions"}

    # Finding 6: a PAT given to the OpenAI client is refused with a pointer to editor keys.
    with pytest.raises(openai.AuthenticationError, match="editor key"):
        openai.OpenAI(base_url=base_url[1], api_key=stack.admin_token, max_retries=0).models.list()

    # Revoke it on the page; the gateway refuses it within its routes refresh.
    page.locator("tr", has_text="laptop").locator("button:has-text('Revoke')").click()
    expect(page.locator(".notice")).to_contain_text("Editor key revoked")
    expect(page.locator("tr", has_text="laptop")).to_contain_text("revoked")
    deadline = time.monotonic() + REVOCATION_BOUND_S
    while True:
        try:
            client.models.list()
        except openai.AuthenticationError as exc:
            assert "editor key has been revoked" in str(exc)
            break
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.5)
    context.close()


def test_no_page_ever_holds_a_secret(web_stack: Stack, seen: Pages) -> None:
    secrets = {
        "model API key": web_stack.model_api_key,
        "admin token": web_stack.admin_token,
        "admin password": admin_password(web_stack),
        "user password": USER_PASSWORD,
        "wrong model key": "not-the-key-0123456789",
    }
    assert len(seen.seen) >= 10
    for url, html in seen.seen:
        for what, secret in secrets.items():
            assert secret not in html, f"{what} in {url}"


def test_screenshots_are_small_pngs() -> None:
    shots = sorted(SCREENSHOTS.glob("*.png"))
    assert {p.stem for p in shots} >= {
        "sign-in",
        "dashboard",
        "models",
        "features",
        "user",
        "audit",
        "editor-keys",
        "usage",
    }
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size < 200_000, shot

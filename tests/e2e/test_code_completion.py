"""A code completion through the whole path: PAT → instance → JWT → gateway → llama.cpp."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

BODY = {
    "current_file": {
        "file_name": "calc.py",
        "content_above_cursor": "def add(a, b):\n    ",
        "content_below_cursor": "\n",
    },
    "intent": "completion",
    "stream": False,
}


def completions_url(stack: Stack) -> str:
    return f"{stack.instance_url}/api/v4/code_suggestions/completions"


def test_completion_with_private_token(stack: Stack, expected_answer: str) -> None:
    response = httpx.post(
        completions_url(stack), json=BODY, headers={"PRIVATE-TOKEN": stack.admin_token}, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["model"]["lang"] == "python"
    assert [c["text"] for c in body["choices"]] == [expected_answer]
    assert body["choices"][0]["finish_reason"] == "stop"


def test_completion_with_bearer_token(stack: Stack, expected_answer: str) -> None:
    response = httpx.post(
        completions_url(stack),
        json=BODY,
        headers={"Authorization": f"Bearer {stack.admin_token}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == expected_answer


def test_streamed_completion_is_relayed(stack: Stack, expected_answer: str) -> None:
    chunks: list[str] = []
    with httpx.stream(
        "POST",
        completions_url(stack),
        json={**BODY, "stream": True},
        headers={"PRIVATE-TOKEN": stack.admin_token},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        # Relayed as it comes, not buffered into one body with a length. (Frame-by-frame
        # fidelity is checked in the gateway and instance tests with a paced upstream: here
        # the tiny model is fast enough that TCP may coalesce its pieces.)
        assert "content-length" not in response.headers
        chunks = [chunk for chunk in response.iter_text() if chunk]
    assert "".join(chunks) == expected_answer


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, "missing"),
        ({"PRIVATE-TOKEN": "enclpat-this-is-not-a-real-token-000000"}, "wrong"),
        ({"Authorization": "Bearer enclpat-this-is-not-a-real-token-000000"}, "wrong bearer"),
        ({"Authorization": "Basic cm9vdDpwYXNzd29yZA=="}, "not a token"),
    ],
)
def test_bad_personal_access_token_is_401(stack: Stack, headers: dict[str, str], why: str) -> None:
    response = httpx.post(completions_url(stack), json=BODY, headers=headers, timeout=30)
    assert response.status_code == 401, why
    assert response.json() == {"message": "401 Unauthorized"}
    assert response.headers.get("x-gitlab-error-origin") == "monolith"


def test_revoked_and_expired_tokens_stop_working_within_the_cache_poll(stack: Stack) -> None:
    """A change made by another process (here: this test, straight in the database) reaches the
    instance's token cache through the change counters it polls every cache_poll_s (1 s):
    the tokens are refused within a few seconds, long before the cache entries would expire."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select

    from enclave.instance.db.engine import make_engine, make_session_factory
    from enclave.instance.db.models import PersonalAccessToken, User
    from enclave.instance.pats import create_token

    engine = make_engine(f"sqlite:///{stack.data_dir / 'instance.db'}")
    sessions = make_session_factory(engine)
    try:
        with sessions.begin() as session:
            root = session.scalars(select(User).where(User.username == "root")).one()
            revocable = create_token(session, root, name="e2e", scopes=["ai_features"])
            expiring = create_token(
                session,
                root,
                name="e2e-expiring",
                scopes=["ai_features"],
                expires_at=datetime.now(UTC) + timedelta(days=1),
            )
        for created in (revocable, expiring):
            ok = httpx.post(
                completions_url(stack),
                json=BODY,
                headers={"PRIVATE-TOKEN": created.plaintext},
                timeout=60,
            )
            assert ok.status_code == 200, ok.text

        with sessions.begin() as session:
            session.get_one(PersonalAccessToken, revocable.id).revoked = True
            session.get_one(PersonalAccessToken, expiring.id).expires_at = datetime.now(
                UTC
            ) - timedelta(seconds=1)
        for created in (revocable, expiring):
            deadline = time.monotonic() + 5.0
            while True:
                refused = httpx.post(
                    completions_url(stack),
                    json=BODY,
                    headers={"PRIVATE-TOKEN": created.plaintext},
                    timeout=60,
                )
                if refused.status_code != 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert refused.status_code == 401
            assert refused.json() == {"message": "401 Unauthorized"}
    finally:
        engine.dispose()

"""AI usage on the instance: recorded in memory per request (no database write on the request
path), flushed in batches, reported per user / feature / model / day by the API, pushed by the
gateway for the direct paths, and counted in /metrics by feature and model (never by user)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from sqlalchemy import func, select

from enclave.instance.bootstrap import EMBEDDED_MODEL_NAME
from enclave.instance.db.models import AiUsage, User
from enclave.instance.gateway_client import pseudonymous_user_id
from enclave.instance.usage import Counts, UsageRecorder, usage_report
from tests.unit.instance.admin_helpers import Api
from tests.unit.instance.conftest import FakeGateway, LiveInstance, module_instance, request_lines
from tests.unit.instance.test_chat_gitlab18 import agent_answer

CHAT = "/api/v4/chat/completions"
ADMIN_USAGE = "/api/v4/admin/ai/usage"
OWN_USAGE = "/api/v4/user/ai/usage"
PUSH = "/api/v4/internal/ai/usage"
SECRET = "usage-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def instance(
    gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory, db_backend: Any
) -> Iterator[LiveInstance]:
    secret_file = tmp_path_factory.mktemp("secret") / "gateway-routes.secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    # A long flush interval: the tests flush themselves, so what they read is deterministic.
    yield from module_instance(
        gateway, tmp_path_factory, gateway_routes_secret_file=secret_file, usage_flush_s=300
    )


def user_of(instance: LiveInstance, token: str) -> tuple[int, str]:
    me = Api(instance, token).get("/api/v4/user").json()
    return int(me["id"]), str(me["username"])


def flush(instance: LiveInstance) -> None:
    instance.ctx.usage.flush(instance.ctx.sessions, instance.ctx.user_id_salt)


def rows_in_db(instance: LiveInstance) -> int:
    with instance.ctx.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(AiUsage)) or 0)


def test_chat_usage_is_recorded_per_user_and_reported(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    fresh_gateway.handler = agent_answer
    token = instance.new_token(("api",))
    user_id, username = user_of(instance, token)
    flush(instance)
    before = rows_in_db(instance)
    with structlog.testing.capture_logs() as logs:
        response = Api(instance, token).post(
            CHAT, {"content": "hi"}, headers={"X-Request-ID": "usage-chat-1"}
        )
        assert response.status_code == 200, response.text
        [line] = request_lines(logs, "usage-chat-1")
    # The request log names the user by id, never by e-mail.
    assert line["user_id"] == user_id
    assert "@" not in str(line)
    # Nothing was written on the request path: the row appears only with the flush.
    assert rows_in_db(instance) == before
    assert instance.ctx.usage.pending() >= 1
    flush(instance)
    assert rows_in_db(instance) > before

    report = Api(instance).get(
        ADMIN_USAGE, params={"group_by": "user,feature,model", "user_id": str(user_id)}
    )
    assert report.status_code == 200, report.text
    [row] = report.json()["rows"]
    assert row["user_id"] == user_id and row["username"] == username
    assert (row["feature"], row["model"]) == ("duo_chat", EMBEDDED_MODEL_NAME)
    assert (row["requests"], row["errors"]) == (1, 0)
    assert (row["input_tokens"], row["output_tokens"]) == (5, 2)
    assert row["latency_ms_avg"] >= 0

    own = Api(instance, token).get(OWN_USAGE, params={"group_by": "feature"})
    assert own.status_code == 200, own.text
    assert [(r["feature"], r["requests"]) for r in own.json()["rows"]] == [("duo_chat", 1)]


def test_metrics_count_by_feature_and_model_never_by_user(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    fresh_gateway.handler = agent_answer
    token = instance.new_token(("api",))
    _, username = user_of(instance, token)
    assert Api(instance, token).post(CHAT, {"content": "hi"}).status_code == 200
    text = httpx.get(instance.url + "/metrics", timeout=10).text
    series = [
        line
        for line in text.splitlines()
        if line.startswith("enclave_instance_ai_requests_total{") and 'feature="duo_chat"' in line
    ]
    assert series and f'model="{EMBEDDED_MODEL_NAME}"' in series[0]
    assert float(series[0].rsplit(" ", 1)[1]) >= 1
    assert 'direction="output"' in text
    assert username not in text and "user" not in "".join(series)


def test_failed_requests_count_as_errors(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    async def broken(request: Any, gateway: FakeGateway) -> Any:
        from aiohttp import web

        return web.json_response({"detail": "Inference failed: boom"}, status=502)

    fresh_gateway.handler = broken
    token = instance.new_token(("api",))
    user_id, _ = user_of(instance, token)
    response = Api(instance, token).post(CHAT, {"content": "hi"})
    assert response.status_code >= 400
    flush(instance)
    [row] = Api(instance).get(ADMIN_USAGE, params={"user_id": str(user_id)}).json()["rows"]
    assert (row["requests"], row["errors"]) == (1, 1)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"since": "yesterday"}, "since 'yesterday' is not an ISO 8601 time"),
        ({"until": "2020-13-01"}, "until '2020-13-01' is not an ISO 8601 time"),
        (
            {"since": "2026-01-02", "until": "2026-01-01"},
            "until (2026-01-01T00:00:00+00:00) must be after since",
        ),
        ({"group_by": "feature,team"}, "group_by 'team' is not one of user, feature, model, day"),
        ({"user_id": "abc"}, "user_id 'abc' is not a user id"),
        ({"user_id": "0"}, "user_id '0' is not a user id"),
    ],
)
def test_admin_report_refuses_bad_parameters_with_400(
    instance: LiveInstance, params: dict[str, str], needle: str
) -> None:
    response = Api(instance).get(ADMIN_USAGE, params=params)
    assert response.status_code == 400, response.text
    assert needle in response.json()["message"]


def test_reports_are_guarded(instance: LiveInstance) -> None:
    token = instance.new_token(("api",))
    assert Api(instance, "").get(ADMIN_USAGE).status_code == 401
    refused = Api(instance, token).get(ADMIN_USAGE)
    assert refused.status_code == 403
    assert "administrators" in refused.json()["message"]
    # Users read their own usage, never grouped by user.
    own = Api(instance, token).get(OWN_USAGE, params={"group_by": "user"})
    assert own.status_code == 400
    assert "group_by 'user' is not one of feature, model, day" in own.json()["message"]
    assert Api(instance, instance.new_token(("read_user",))).get(OWN_USAGE).status_code == 403


def push(instance: LiveInstance, body: Any, secret: str | None = SECRET) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.post(instance.url + PUSH, json=body, headers=headers, timeout=10)


def test_gateway_push_maps_the_pseudonym_to_the_user(instance: LiveInstance) -> None:
    token = instance.new_token(("api",))
    user_id, username = user_of(instance, token)
    pseudonym = pseudonymous_user_id(instance.ctx.user_id_salt, user_id)
    entry = {
        "user": pseudonym,
        "feature": "code_completions",
        "model": "coder",
        "minute": int(time.time() // 60),
        "requests": 3,
        "errors": 1,
        "input_tokens": 30,
        "output_tokens": 12,
        "latency_ms_total": 900,
    }
    assert push(instance, {"version": 1, "entries": [entry]}).status_code == 204
    flush(instance)
    rows = Api(instance).get(
        ADMIN_USAGE, params={"group_by": "user,feature,model", "user_id": str(user_id)}
    )
    [row] = rows.json()["rows"]
    assert row["username"] == username
    assert (row["feature"], row["model"], row["requests"], row["errors"]) == (
        "code_completions",
        "coder",
        3,
        1,
    )
    assert row["latency_ms_avg"] == 300.0


def test_gateway_push_needs_the_secret_and_a_valid_body(instance: LiveInstance) -> None:
    assert push(instance, {"version": 1, "entries": []}, secret=None).status_code == 401
    assert push(instance, {"version": 1, "entries": []}, secret="x" * 20).status_code == 401
    # Entries of unknown features or far-off minutes are dropped (bounded metrics labels).
    odd = {
        "user": "u",
        "feature": "no_such_feature",
        "model": "m",
        "minute": int(time.time() // 60),
        "requests": 1,
        "errors": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "latency_ms_total": 1,
    }
    before = instance.ctx.usage.pending()
    assert push(instance, {"version": 1, "entries": [odd]}).status_code == 204
    stale = {**odd, "feature": "duo_chat", "minute": 1}
    assert push(instance, {"version": 1, "entries": [stale]}).status_code == 204
    assert instance.ctx.usage.pending() == before
    bad = push(instance, {"version": 1, "entries": [{"user": "u", "feature": "f"}]})
    assert bad.status_code == 400
    assert "usage push: entries.0.minute is invalid" in bad.json()["message"]


def test_push_endpoint_is_absent_without_a_secret(
    live_instance_factory: Any, tmp_path: Path
) -> None:
    live = live_instance_factory()
    assert push(live, {"version": 1, "entries": []}).status_code == 404


def test_recorder_is_bounded_and_counts_drops() -> None:
    recorder = UsageRecorder(max_keys=2)
    for model in ("a", "b", "c", "c"):
        recorder.record(feature="duo_chat", model=model, counts=Counts(1, 0, 0, 0, 5), user_id=1)
    assert recorder.pending() == 2
    assert recorder.dropped == 2


def test_usage_report_groups_by_day_and_filters_the_window(
    instance: LiveInstance,
) -> None:
    recorder = instance.ctx.usage
    with instance.ctx.sessions() as session, session.begin():
        user = User(username="daily", name="daily", email="daily@example.com")
        session.add(user)
        session.flush()
        uid = user.id
    two_days_ago = time.time() - 2 * 86400
    recorder.record(
        feature="explain_vulnerability",
        model="m",
        counts=Counts(2, 0, 10, 20, 100),
        user_id=uid,
        at=two_days_ago,
    )
    recorder.record(
        feature="explain_vulnerability", model="m", counts=Counts(1, 1, 1, 1, 50), user_id=uid
    )
    flush(instance)
    with instance.ctx.sessions() as session:
        since = datetime.now(UTC) - timedelta(days=3)
        rows = usage_report(session, since=since, group_by=("day",), user_id=uid)
        assert [r.requests for r in rows] == [2, 1]
        assert rows[0].day is not None and rows[0].day < rows[1].day  # type: ignore[operator]
        recent = usage_report(
            session, since=datetime.now(UTC) - timedelta(hours=1), group_by=(), user_id=uid
        )
        [total] = recent
        assert (total.requests, total.errors, total.feature, total.day) == (1, 1, None, None)
        with pytest.raises(ValueError, match="cannot group usage by team"):
            usage_report(session, since=since, group_by=("team",))


def test_token_counts_of_whole_answers_come_from_the_gateway_headers(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    async def counted(request: Any, gateway: FakeGateway) -> Any:
        from aiohttp import web

        headers = {"X-Enclave-Input-Tokens": "31", "X-Enclave-Output-Tokens": "12"}
        return web.json_response("Add x.", headers=headers)

    fresh_gateway.handler = counted
    token = instance.new_token(("api",))
    user_id, _ = user_of(instance, token)
    response = Api(instance, token).post("/api/v4/ai/generate_commit_message", {"diff": "+x\n"})
    assert response.status_code == 200, response.text
    flush(instance)
    [row] = Api(instance).get(ADMIN_USAGE, params={"user_id": str(user_id)}).json()["rows"]
    assert (row["feature"], row["input_tokens"], row["output_tokens"]) == (
        "generate_commit_message",
        31,
        12,
    )

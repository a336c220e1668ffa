"""``enclave usage``: the usage report as a table or JSON, with the API's validation."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from enclave.instance.bootstrap import initialise
from enclave.instance.db import User, make_engine, make_session_factory
from enclave.instance.usage import Counts, UsageRecorder
from tests.unit.instance.conftest import Backend
from tests.unit.instance.test_admin_cli import Cli, cli

__all__ = ["cli"]  # fixture


def seed(cli: Cli) -> int:
    """A user with usage in two features, written as the flush writes it."""
    initialise(cli.settings)
    engine = make_engine(cli.settings.database_url)
    sessions = make_session_factory(engine)
    with sessions() as session, session.begin():
        user = User(username="ada", name="Ada", email="ada@example.com")
        session.add(user)
        session.flush()
        user_id = user.id
    recorder = UsageRecorder(max_keys=100)
    recorder.record(
        feature="duo_chat", model="m1", counts=Counts(2, 1, 10, 4, 300), user_id=user_id
    )
    recorder.record(
        feature="code_completions", model="m2", counts=Counts(1, 0, 7, 3, 50), user_id=user_id
    )
    assert recorder.flush(sessions, b"s" * 32) == 2
    engine.dispose()
    return user_id


def test_usage_prints_a_table_and_json(cli: Cli, db_backend: Backend) -> None:
    seed(cli)
    result = cli("usage", "--group-by", "user,feature")
    assert result.exit_code == 0, result.output
    assert "ada" in result.stdout and "duo_chat" in result.stdout
    assert "tokens in" in result.stdout
    rows = cli.json("usage", "--group-by", "feature", "--user", "ada")
    assert [(r["feature"], r["requests"], r["errors"]) for r in rows] == [
        ("code_completions", 1, 0),
        ("duo_chat", 2, 1),
    ]
    assert rows[1]["latency_ms_avg"] == 150.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group-by", "team"], "group_by 'team' is not one of"),
        (["--since", "last week"], "since 'last week' is not an ISO 8601 time"),
        (["--user", "nobody"], "nobody"),
    ],
)
def test_usage_refuses_bad_options(cli: Cli, args: list[str], message: str) -> None:
    result = cli("usage", *args)
    assert result.exit_code == 1
    assert message in result.output


def test_usage_says_when_there_is_none(cli: Cli, tmp_path: Path) -> None:
    result = cli("usage", "--since", time.strftime("%Y-%m-%d"))
    assert result.exit_code == 0, result.output
    assert "No AI usage in this period." in result.stdout

"""``enclave users set-password`` and ``enclave editor-keys``; the first admin password."""

from __future__ import annotations

import stat

import jwt
from sqlalchemy import select

from enclave.instance.db import make_engine, make_session_factory
from enclave.instance.db.models import User
from enclave.instance.passwords import check_sign_in
from tests.unit.instance.test_admin_cli import Cli, cli

__all__ = ["cli"]  # fixture

NEW_PASSWORD = "a-much-longer-password-1"


def _check(cli: Cli, username: str, password: str) -> bool:
    engine = make_engine(cli.settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            return check_sign_in(session, username, password) is not None
    finally:
        engine.dispose()


def test_bootstrap_writes_the_first_admin_password_once_0600(cli: Cli) -> None:
    assert cli("users", "list").exit_code == 0  # initialises the instance
    path = cli.settings.admin_password_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text().strip()
    assert len(first) >= 20 and _check(cli, "root", first)
    engine = make_engine(cli.settings.database_url)
    with make_session_factory(engine)() as session:
        stored = session.scalar(select(User.password_hash).where(User.username == "root"))
    engine.dispose()
    assert stored is not None and stored.startswith("$argon2id$") and first not in stored
    assert cli("users", "list").exit_code == 0
    assert path.read_text().strip() == first  # not rewritten at the next start


def test_set_password_from_stdin_and_from_the_prompt(cli: Cli) -> None:
    result = cli("users", "set-password", "root", "--stdin", input=NEW_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert NEW_PASSWORD not in result.output
    assert _check(cli, "root", NEW_PASSWORD)
    short = cli("users", "set-password", "root", "--stdin", input="short\n")
    assert short.exit_code == 1 and "at least 12 characters" in short.output
    differ = cli("users", "set-password", "root", input="first-password-1\nsecond-password-2\n")
    assert differ.exit_code == 2 and "differ" in differ.output
    prompted = cli("users", "set-password", "root", input="prompted-password-9\n" * 2)
    assert prompted.exit_code == 0 and _check(cli, "root", "prompted-password-9")
    unknown = cli("users", "set-password", "nobody", "--stdin", input=NEW_PASSWORD + "\n")
    assert unknown.exit_code == 1 and "nobody" in unknown.output


def test_editor_keys_create_list_revoke(cli: Cli) -> None:
    created = cli.json(
        "editor-keys", "create", "root", "--name", "ci", "--feature", "duo_chat", "--days", "7"
    )
    claims = jwt.decode(created["key"], options={"verify_signature": False})
    assert claims["enclave_editor_key_id"] == created["id"]
    assert claims["exp"] - claims["iat"] == 7 * 86400
    [listed] = cli.json("editor-keys", "list", "root")
    assert listed["id"] == created["id"] and "key" not in listed
    revoked = cli("editor-keys", "revoke", "root", str(created["id"]))
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    again = cli("editor-keys", "revoke", "root", str(created["id"]))
    assert "already revoked" in again.output
    too_long = cli(
        "editor-keys", "create", "root", "--name", "x", "--feature", "duo_chat", "--days", "400"
    )
    assert too_long.exit_code == 1 and "EDITOR_KEY_MAX_DAYS" in too_long.output

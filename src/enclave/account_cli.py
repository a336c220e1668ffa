"""``enclave users set-password`` and ``enclave editor-keys create|list|revoke``.

Kept apart from :mod:`enclave.admin_cli` (same helpers): web UI passwords and personal editor
keys. A password is read from a prompt (twice, hidden) or from stdin (``--stdin``), never from
an argument, which other users could read in the process list.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from sqlalchemy.orm import Session

from enclave.admin_cli import (
    Env,
    JsonOption,
    _env,
    _fail,
    _print_json,
    _run,
    _view_table,
    out,
    users_app,
)

if TYPE_CHECKING:
    from enclave.instance.db.models import User

editor_keys_app = typer.Typer(
    help="Personal editor keys: long-lived keys for editor tools that take an OpenAI API key "
    "(shown once, at creation).",
    no_args_is_help=True,
)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = typer.prompt("New password", hide_input=True)
    second = typer.prompt("Repeat it", hide_input=True)
    if first != second:
        _fail("the two passwords differ; nothing changed", 2)
    return str(first)


def _user(session: Session, ref: str) -> User:
    """The user a command names, by username or id."""
    from enclave.instance import accounts

    return accounts.find_user(session, int(ref) if ref.isdigit() else ref)


def _owner(session: Session, ref: str) -> int:
    return _user(session, ref).id


@users_app.command("set-password")
def users_set_password(
    username: Annotated[str, typer.Argument(help="The user (username or id).")],
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the password from the first line of stdin.")
    ] = False,
) -> None:
    """Set a user's web UI password (argon2id hash; at least 12 characters)."""
    from enclave.instance import passwords

    password = _read_password(stdin)
    with _env() as env:

        def work(session: Session) -> str:
            user = _user(session, username)
            passwords.set_password(session, user, password, env.actor)
            return user.username

        name = _run(env, work)
    out.print(f"Password of {name} set; sign in at /admin.", markup=False)


def _signer(env: Env) -> Any:
    from enclave.instance.editor_keys import Signer

    return Signer(
        env.boot.keys,
        env.settings.instance.issuer(),
        str(env.boot.instance_id),
        env.boot.user_id_salt,
    )


def _key_rows(views: list[dict[str, Any]]) -> None:
    _view_table(
        "Editor keys",
        [
            ("id", "id"),
            ("name", "name"),
            ("features", lambda v: ", ".join(v["features"])),
            ("created", "created_at"),
            ("expires", "expires_at"),
            ("active", "active"),
            ("revoked", "revoked"),
        ],
        views,
    )


@editor_keys_app.command("create")
def editor_keys_create(
    username: Annotated[str, typer.Argument(help="Whose key (username or id).")],
    name: Annotated[str, typer.Option(help="The editor or machine it is for.")],
    feature: Annotated[
        list[str], typer.Option("--feature", help="A feature the key may use; repeat for more.")
    ],
    days: Annotated[int, typer.Option(help="Days until it expires (up to the maximum).")] = 30,
    as_json: JsonOption = False,
) -> None:
    """Create an editor key; it is printed once (the instance keeps only its record)."""
    from enclave.instance import editor_keys

    with _env() as env:
        signer = _signer(env)

        def work(session: Session) -> tuple[dict[str, Any], str]:
            created = editor_keys.create_key(
                session,
                signer,
                _owner(session, username),
                name=name,
                features=feature,
                expires_in_days=days,
                max_days=env.settings.instance.editor_key_max_days,
                actor=env.actor,
            )
            return editor_keys.key_view(created.row), created.key

        view, key = _run(env, work)
    if as_json:
        _print_json({**view, "key": key})
        return
    _key_rows([view])
    out.print("The key (shown only now; use it as the OpenAI API key):", markup=False)
    out.print(key, markup=False)


@editor_keys_app.command("list")
def editor_keys_list(
    username: Annotated[str, typer.Argument(help="Whose keys (username or id).")],
    as_json: JsonOption = False,
) -> None:
    """List a user's editor keys (never the keys themselves)."""
    from enclave.instance import editor_keys

    with _env() as env:
        views = _run(
            env,
            lambda s: [
                editor_keys.key_view(k) for k in editor_keys.list_keys(s, _owner(s, username))
            ],
        )
    _print_json(views) if as_json else _key_rows(views)


@editor_keys_app.command("revoke")
def editor_keys_revoke(
    username: Annotated[str, typer.Argument(help="Whose key (username or id).")],
    key_id: Annotated[int, typer.Argument(help="The key's id (see editor-keys list).")],
) -> None:
    """Revoke an editor key; the gateway refuses it within its routes refresh (30 s)."""
    from enclave.instance import editor_keys

    with _env() as env:

        def work(session: Session) -> bool:
            owner = _owner(session, username)
            before = editor_keys.list_keys(session, owner)
            was_revoked = any(k.id == key_id and k.revoked_at is not None for k in before)
            editor_keys.revoke_key(session, owner, key_id, env.actor)
            return was_revoked

        already = _run(env, work)
    out.print(
        f"Editor key {key_id} was already revoked." if already else f"Editor key {key_id} revoked.",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(editor_keys_app, name="editor-keys")

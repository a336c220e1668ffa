"""Administration commands: ``enclave models|features|settings|users|tokens|secret-key|keys``
(and ``doctor``, ``backup``, ``restore``).

They work directly on the instance database of the configured data dir (``--data-dir`` /
``ENCLAVE_DATA_DIR``) or ``ENCLAVE_DATABASE_URL``, with the same validation, audit events and
messages as the admin REST API; the audit log names the operating-system user with
"(enclave CLI)". Output is a table, or JSON with ``--json``. Exit codes: 0 done, 1 refused or
failed (the message says why), 2 bad usage.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON instead of a table (for scripts).")
]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _configure_logging() -> None:
    """Warnings and errors only, on stderr: the command's output is for people and scripts."""
    from enclave.common.logging import configure_logging

    configure_logging("cli", "warning", "console")


@dataclass
class Env:
    settings: Any
    boot: Any
    sessions: sessionmaker[Session]
    actor: Any


@contextmanager
def _env() -> Iterator[Env]:
    """Settings, an initialised instance (migrations, keys; idempotent) and sessions."""
    from enclave.config import load_settings
    from enclave.instance.actor import Actor
    from enclave.instance.bootstrap import initialise
    from enclave.instance.db.engine import make_engine, make_session_factory

    _configure_logging()
    try:
        settings = load_settings(stack=True)
        boot = initialise(settings)
    except Exception as exc:  # configuration, database or key problems: say which
        _fail(f"cannot open the instance: {exc}")
    engine = make_engine(
        settings.database_url,
        busy_timeout_ms=round(settings.instance.database_busy_timeout_s * 1000),
    )
    try:
        yield Env(settings, boot, make_session_factory(engine), Actor.cli())
    finally:
        engine.dispose()


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"Error: {message}", markup=False)
    raise typer.Exit(code)


def _run(env: Env, work: Callable[[Session], T]) -> T:
    from enclave.instance.admin_errors import AdminError
    from enclave.instance.db.engine import transaction

    try:
        # Every command may write and runs once: take the write lock up front, so a command
        # queues behind the running server's writes instead of failing on SQLite.
        with transaction(env.sessions, write=True) as session:
            return work(session)
    except AdminError as exc:
        _fail(exc.message)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _print_json(data: Any) -> None:
    out.print(json.dumps(_jsonable(data), indent=2, sort_keys=False), markup=False)


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    out.print(table)


# A column: its heading and the view's key for it, or a function of the whole view.
Column = tuple[str, str | Callable[[dict[str, Any]], Any]]


def _view_table(title: str, columns: Sequence[Column], views: Sequence[dict[str, Any]]) -> None:
    """A table with a row a view (the API's dict shape), so each listing only names its cells."""
    _table(
        title,
        [heading for heading, _ in columns],
        [[cell(v) if callable(cell) else v[cell] for _, cell in columns] for v in views],
    )


def _read_secret(file: Path | None, env_name: str | None, what: str) -> str | None:
    if file is not None and env_name is not None:
        _fail(f"give the {what} with either a file or an environment variable, not both", 2)
    if file is not None:
        text = sys.stdin.read() if str(file) == "-" else _read_file(file)
        return text.strip()
    if env_name is not None:
        value = os.environ.get(env_name)
        if value is None:
            _fail(f"environment variable {env_name} is not set", 2)
        return (value or "").strip()
    return None


def _read_file(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}", 2)


# ---------------------------------------------------------------------------------------------
models_app = typer.Typer(
    help="Self-hosted models the gateway can call (GitLab's self-hosted model registry).",
    no_args_is_help=True,
)

ApiKeyFile = Annotated[
    Path | None,
    typer.Option(
        help="Read the model's API key from this file ('-' reads standard input); it is stored "
        "AES-256-GCM encrypted and never shown. Not on the command line: shells keep history."
    ),
]
ApiKeyEnv = Annotated[
    str | None,
    typer.Option(help="Read the model's API key from this environment variable instead."),
]


def _model_rows(views: list[dict[str, Any]]) -> None:
    _table(
        "Self-hosted models",
        [
            "id",
            "name",
            "family",
            "release",
            "provider",
            "endpoint",
            "identifier",
            "key",
            "features",
        ],
        [
            [
                v["id"],
                v["name"],
                v["model"],
                v["release_state"],
                v["provider"],
                v["endpoint"] or "-",
                v["identifier"],
                "yes" if v["has_api_token"] else "no",
                ", ".join(v["feature_settings"]) or "-",
            ]
            for v in views
        ],
    )


@models_app.command("list")
def models_list(as_json: JsonOption = False) -> None:
    """List the registered models (the API key is never shown, only whether there is one)."""
    from enclave.instance import registry

    with _env() as env:
        views = _run(env, lambda s: [registry.model_view(m) for m in registry.list_models(s)[0]])
    _print_json(views) if as_json else _model_rows(views)


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Option(help="Deployment name, unique (e.g. mistral-vllm).")],
    family: Annotated[
        str,
        typer.Option(
            "--family",
            "--model",
            help="Model family: mistral, mixtral, codestral, llama3, codellama, codegemma, "
            "deepseekcoder, gpt, qwen, gemini, claude_3 or general. It picks the prompts.",
        ),
    ],
    identifier: Annotated[
        str,
        typer.Option(
            help="Model id for the provider: custom_openai/<served-name> (api), "
            "azure/<deployment>, bedrock/<model-id>, vertex_ai/<model>, anthropic/<model>."
        ),
    ],
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="http(s) URL of the model server, e.g. http://vllm.internal:8000/v1 "
            "(required for api and azure_openai)."
        ),
    ] = None,
    provider: Annotated[
        str,
        typer.Option(help="api (OpenAI-compatible), azure_openai, bedrock, vertex_ai, anthropic."),
    ] = "api",
    region: Annotated[
        str | None,
        typer.Option(
            help="Amazon Bedrock: the AWS region (e.g. eu-central-1) instead of an endpoint; "
            "wins over the gateway's ENCLAVE_GATEWAY__BEDROCK_REGION."
        ),
    ] = None,
    project: Annotated[
        str | None,
        typer.Option(
            help="Google Vertex AI: the Google Cloud project (with --location); wins over "
            "the gateway's ENCLAVE_GATEWAY__VERTEX_PROJECT."
        ),
    ] = None,
    location: Annotated[
        str | None,
        typer.Option(help="Google Vertex AI: the location (with --project), e.g. us-east5."),
    ] = None,
    api_key_file: ApiKeyFile = None,
    api_key_env: ApiKeyEnv = None,
    as_json: JsonOption = False,
) -> None:
    """Register a model. Test it afterwards with: enclave models test NAME."""
    from enclave.instance import registry
    from enclave.instance.admin_errors import AdminError

    key = _read_secret(api_key_file, api_key_env, "API key")
    try:
        spec = registry.ModelSpec.parse(
            {
                "name": name,
                "model": family,
                "provider": provider,
                "endpoint": endpoint,
                "region": region,
                "project": project,
                "location": location,
                "identifier": identifier,
                "api_token": key,
            }
        )
    except AdminError as exc:
        _fail(exc.message)
    with _env() as env:
        view = _run(
            env,
            lambda s: registry.model_view(
                registry.create_model(
                    s,
                    env.boot.secret_box,
                    spec,
                    env.actor,
                    rules=registry.EndpointRules.from_settings(env.settings.instance),
                )
            ),
        )
    _print_json(view) if as_json else _model_rows([view])


@models_app.command("update")
def models_update(
    model: Annotated[str, typer.Argument(help="Name or id of the model.")],
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    family: Annotated[
        str | None, typer.Option("--family", "--model", help="New model family.")
    ] = None,
    identifier: Annotated[str | None, typer.Option(help="New identifier.")] = None,
    endpoint: Annotated[str | None, typer.Option(help="New endpoint URL.")] = None,
    provider: Annotated[str | None, typer.Option(help="New provider kind.")] = None,
    region: Annotated[
        str | None, typer.Option(help='New AWS region (Amazon Bedrock); "" for the gateway\'s.')
    ] = None,
    project: Annotated[
        str | None,
        typer.Option(help='New Google Cloud project (Vertex AI); "" for the gateway\'s.'),
    ] = None,
    location: Annotated[
        str | None, typer.Option(help="New Vertex AI location (with the model's project).")
    ] = None,
    api_key_file: ApiKeyFile = None,
    api_key_env: ApiKeyEnv = None,
    remove_api_key: Annotated[
        bool, typer.Option("--remove-api-key", help="Forget the stored API key.")
    ] = False,
    keep_api_key: Annotated[
        bool,
        typer.Option(
            "--keep-api-key",
            help="With a new --endpoint on another host: send the stored API key there "
            "(otherwise give the key again with --api-key-file / --api-key-env).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Change a model; options not given keep their value.

    Moving the endpoint to another host while an API key is stored needs the key again (or
    --keep-api-key); the audit log records the old and the new endpoint.
    """
    from enclave.instance import registry

    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "name": name,
            "model": family,
            "identifier": identifier,
            "endpoint": endpoint,
            "provider": provider,
            "region": region,
            "project": project,
            "location": location,
        }.items()
        if v is not None
    }
    key = _read_secret(api_key_file, api_key_env, "API key")
    if key is not None:
        changes["api_token"] = key
    if remove_api_key:
        changes["api_token"] = ""
    if not changes:
        _fail("nothing to change; see enclave models update --help", 2)
    if keep_api_key:
        changes["keep_api_token"] = True
    with _env() as env:

        def work(session: Session) -> dict[str, Any]:
            target = registry.find_model(session, model)
            updated = registry.update_model(
                session,
                env.boot.secret_box,
                target.id,
                changes,
                env.actor,
                rules=registry.EndpointRules.from_settings(env.settings.instance),
            )
            return registry.model_view(updated)

        view = _run(env, work)
    _print_json(view) if as_json else _model_rows([view])


@models_app.command("delete")
def models_delete(
    model: Annotated[str, typer.Argument(help="Name or id of the model.")],
    as_json: JsonOption = False,
) -> None:
    """Delete a model; refused while a feature uses it (the message lists them)."""
    from enclave.instance import registry

    with _env() as env:

        def work(session: Session) -> str:
            target = registry.find_model(session, model)
            registry.delete_model(session, target.id, env.actor)
            return target.name

        deleted = _run(env, work)
    if as_json:
        _print_json({"deleted": deleted})
    else:
        out.print(f"Deleted self-hosted model {deleted!r}.", markup=False)


@models_app.command("test")
def models_test(
    model: Annotated[str, typer.Argument(help="Name or id of the model.")],
    as_json: JsonOption = False,
) -> None:
    """Ask the AI gateway to call the model (as GitLab's "Test connection" does) and report
    success or the model's exact failure, with identifier suggestions where the server lists
    its models. Exit code 1 when the test fails."""
    from enclave.instance import ai_settings, registry
    from enclave.instance.connection import (
        ModelUnderTest,
        check_connection,
        saved_model_under_test,
    )
    from enclave.instance.gateway_client import (
        ForwardIdentity,
        GatewayClient,
        host_name,
        pseudonymous_user_id,
    )
    from enclave.instance.tokens import TokenMinter

    with _env() as env:

        def load(session: Session) -> tuple[ModelUnderTest, Any]:
            target = registry.find_model(session, model)
            return (
                saved_model_under_test(env.boot.secret_box, target),
                ai_settings.effective(session, env.settings),
            )

        under_test, effective = _run(env, load)
        issuer = env.settings.instance.issuer()
        minter = TokenMinter(
            env.boot.keys,
            issuer=issuer,
            instance_id=env.boot.instance_id,
            lifetime_s=env.settings.instance.token_lifetime_s,
        )
        identity = ForwardIdentity(
            instance_id=str(env.boot.instance_id),
            host_name=host_name(issuer),
            global_user_id=pseudonymous_user_id(env.boot.user_id_salt, env.boot.admin_user_id),
            request_id=uuid.uuid4().hex,
        )

        async def check() -> Any:
            client = GatewayClient(effective.ai_gateway_url, effective.ai_gateway_timeout_seconds)
            await client.start()
            try:
                return await check_connection(client, minter, identity, under_test)
            finally:
                await client.close()

        result = asyncio.run(check())
    if as_json:
        _print_json(result.view())
    else:
        mark = "[green]OK[/green]" if result.success else "[red]FAILED[/red]"
        out.print(f"{mark} {under_test.name}: ", end="")
        out.print(result.message, markup=False)
        if result.suggested_identifiers:
            out.print("Suggested identifiers: " + ", ".join(result.suggested_identifiers))
    if not result.success:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------
features_app = typer.Typer(
    help="Which model serves each AI feature (disabled, vendored or a self-hosted model).",
    no_args_is_help=True,
)


def _feature_rows(views: list[dict[str, Any]]) -> None:
    def model_name(brief: dict[str, Any] | None) -> str:
        return brief["name"] if brief else "-"

    _table(
        "Feature settings",
        [
            "feature",
            "release",
            "set to",
            "model",
            "fallback",
            "in effect",
            "effective model",
            "gateway",
        ],
        [
            [
                v["feature"],
                v["release_state"],
                v["provider"],
                model_name(v["self_hosted_model"]),
                model_name(v["fallback_model"]),
                v["effective_provider"]
                + (f" (from {v['inherited_from']})" if v["inherited_from"] else ""),
                model_name(v["effective_self_hosted_model"]),
                (v["gateway_url"] or "not configured") if v["gateway"] else "-",
            ]
            for v in views
        ],
    )


@features_app.command("list")
def features_list(as_json: JsonOption = False) -> None:
    """Every feature, what it is set to and what it uses in effect (chat sub-features that are
    unassigned follow duo_chat)."""
    from enclave.instance import ai_settings
    from enclave.instance.feature_settings import list_feature_settings

    with _env() as env:
        views = _run(
            env, lambda s: list_feature_settings(s, ai_settings.effective(s, env.settings))
        )
    _print_json(views) if as_json else _feature_rows(views)


@features_app.command("set")
def features_set(
    features: Annotated[
        list[str],
        typer.Argument(
            help="One or more features: code_completions, code_generations, duo_chat, "
            "duo_chat_explain_code, duo_chat_write_tests, duo_chat_refactor_code, "
            "duo_chat_fix_code, duo_chat_troubleshoot_job, explain_vulnerability, "
            "resolve_vulnerability, summarize_review, summarize_new_merge_request, "
            "generate_commit_message, review_merge_request, glab_ask_git_command."
        ),
    ],
    provider: Annotated[
        str | None,
        typer.Option(
            help="disabled, vendored, self_hosted or unassigned [default: self_hosted when "
            "--model is given]."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Name or id of the self-hosted model (with provider self_hosted)."),
    ] = None,
    fallback_model: Annotated[
        str | None,
        typer.Option(
            "--fallback-model",
            help="Name or id of a second self-hosted model, tried once when the model fails "
            "[default: keep the current fallback where it still fits].",
        ),
    ] = None,
    no_fallback: Annotated[
        bool, typer.Option("--no-fallback", help="Remove the fallback model.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Set features to a model (or disabled / vendored / unassigned), all or none; a model
    family that a feature does not support is refused with the families it does."""
    from enclave.instance import ai_settings
    from enclave.instance.admin_errors import AdminError
    from enclave.instance.feature_settings import (
        KEEP,
        Keep,
        parse_feature,
        parse_provider,
        set_features,
    )

    if provider is None and model is None:
        _fail("give --model NAME, or --provider disabled|vendored|unassigned", 2)
    if fallback_model is not None and no_fallback:
        _fail("give --fallback-model NAME or --no-fallback, not both", 2)
    fallback: str | Keep | None = KEEP
    if fallback_model is not None:
        fallback = fallback_model
    elif no_fallback:
        fallback = None
    try:
        parsed = [parse_feature(f) for f in features]
        chosen = parse_provider(provider or "self_hosted")
    except AdminError as exc:
        _fail(exc.message)
    with _env() as env:
        views = _run(
            env,
            lambda s: set_features(
                s,
                parsed,
                chosen,
                model,
                env.actor,
                fallback,
                ai_settings.effective(s, env.settings),
            ),
        )
    _print_json(views) if as_json else _feature_rows(views)


# ---------------------------------------------------------------------------------------------
settings_app = typer.Typer(
    help="Instance-wide AI settings: AI gateway URL, its timeout, verbose AI logs.",
    no_args_is_help=True,
)


def _settings_rows(view: dict[str, Any]) -> None:
    _table("AI settings", ["setting", "value"], [[k, v] for k, v in view.items()])


@settings_app.command("show")
def settings_show(as_json: JsonOption = False) -> None:
    """Show the AI settings in effect and where each comes from (database or configuration)."""
    from enclave.instance import ai_settings

    with _env() as env:
        view = _run(env, lambda s: ai_settings.effective(s, env.settings).view())
    _print_json(view) if as_json else _settings_rows(view)


@settings_app.command("set")
def settings_set(
    gateway_url: Annotated[
        str | None,
        typer.Option(help="AI gateway URL (http/https); 'default' goes back to the configured."),
    ] = None,
    vendored_gateway_url: Annotated[
        str | None,
        typer.Option(
            help="Shared AI gateway URL for vendored features; 'default' goes back to the "
            "configured one."
        ),
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(help="Gateway timeout in seconds, 60-600; 'default' goes back to config."),
    ] = None,
    verbose_ai_logs: Annotated[
        bool | None,
        typer.Option(
            "--verbose-ai-logs/--no-verbose-ai-logs",
            help="Ask the gateway to log prompts and answers.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Change AI settings; they take effect on the next request on every instance."""
    from enclave.instance import ai_settings

    changes: dict[str, Any] = {}
    if gateway_url is not None:
        changes["ai_gateway_url"] = None if gateway_url == "default" else gateway_url
    if vendored_gateway_url is not None:
        changes["vendored_ai_gateway_url"] = (
            None if vendored_gateway_url == "default" else vendored_gateway_url
        )
    if timeout is not None:
        changes["ai_gateway_timeout_seconds"] = None if timeout == "default" else timeout
    if verbose_ai_logs is not None:
        changes["enabled_instance_verbose_ai_logs"] = verbose_ai_logs
    if not changes:
        _fail("nothing to change; see enclave settings set --help", 2)
    with _env() as env:
        view = _run(env, lambda s: ai_settings.update(s, env.settings, changes, env.actor).view())
    _print_json(view) if as_json else _settings_rows(view)


# ---------------------------------------------------------------------------------------------
users_app = typer.Typer(help="Users (administrators and regular users).", no_args_is_help=True)


def _user_rows(views: list[dict[str, Any]]) -> None:
    _view_table(
        "Users",
        [
            ("id", "id"),
            ("username", "username"),
            ("name", "name"),
            ("email", "email"),
            ("admin", "is_admin"),
            ("state", "state"),
            ("created", "created_at"),
        ],
        views,
    )


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Login name: letters, digits, _ . -")],
    email: Annotated[str, typer.Option(help="E-mail address, unique.")],
    name: Annotated[str | None, typer.Option(help="Display name [default: username].")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an administrator.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Create a user. Give them a token with: enclave tokens create USERNAME."""
    from enclave.instance import accounts

    with _env() as env:
        view = _run(
            env,
            lambda s: accounts.user_view(
                accounts.create_user(
                    s, username=username, name=name, email=email, is_admin=admin, actor=env.actor
                ),
                env.settings.instance.issuer(),
            ),
        )
    _print_json(view) if as_json else _user_rows([view])


@users_app.command("list")
def users_list(
    search: Annotated[
        str | None, typer.Option(help="Only users whose username, name or e-mail contains this.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List users."""
    from enclave.instance import accounts

    with _env() as env:
        views = _run(
            env,
            lambda s: [
                accounts.user_view(u, env.settings.instance.issuer())
                for u in accounts.list_users(s, search=search, search_emails=True)[0]
            ],
        )
    _print_json(views) if as_json else _user_rows(views)


UserRef = Annotated[str, typer.Argument(help="Username or id.")]


def _set_blocked(user: str, blocked: bool, as_json: bool) -> None:
    from enclave.instance import accounts

    with _env() as env:

        def work(session: Session) -> tuple[dict[str, Any], bool]:
            found = accounts.find_user(session, user)
            unchanged = found.blocked == blocked
            changed = accounts.set_blocked(session, found.id, blocked, env.actor)
            return accounts.user_view(changed, env.settings.instance.issuer()), unchanged

        view, unchanged = _run(env, work)
    if as_json:
        _print_json(view)
        return
    state = "blocked" if blocked else "active"
    if unchanged:
        out.print(f"User {view['username']} was already {state}; nothing changed.", markup=False)
    elif blocked:
        out.print(
            f"Blocked {view['username']}: their tokens stop working at once on the instance "
            "and within the gateway's routes_refresh_s (30 s) on the gateway.",
            markup=False,
        )
    else:
        out.print(f"Unblocked {view['username']}.", markup=False)


@users_app.command("block")
def users_block(user: UserRef, as_json: JsonOption = False) -> None:
    """Block a user: every token of theirs is refused (GitLab's block)."""
    _set_blocked(user, True, as_json)


@users_app.command("unblock")
def users_unblock(user: UserRef, as_json: JsonOption = False) -> None:
    """Unblock a user: their tokens that have not expired or been revoked work again."""
    _set_blocked(user, False, as_json)


@users_app.command("delete")
def users_delete(
    user: UserRef,
    hard_delete: Annotated[
        bool,
        typer.Option(
            "--hard-delete", help="Also delete their usage records (else kept, anonymous)."
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete a user and their tokens (not the last administrator). Audit events stay."""
    from enclave.instance import accounts

    if not yes and not typer.confirm(f"Delete user {user} and all their tokens?"):
        _fail("not deleted", 1)
    with _env() as env:

        def work(session: Session) -> dict[str, Any]:
            found = accounts.find_user(session, user)
            view = accounts.user_view(found, env.settings.instance.issuer())
            accounts.delete_user(
                session, found.id, env.actor, salt=env.boot.user_id_salt, hard_delete=hard_delete
            )
            return view

        view = _run(env, work)
    if as_json:
        _print_json({"deleted": view, "hard_delete": hard_delete})
    else:
        out.print(f"Deleted user {view['username']} (id {view['id']}).", markup=False)


# ---------------------------------------------------------------------------------------------
tokens_app = typer.Typer(
    help="Personal access tokens (stored hashed; shown once, at creation).", no_args_is_help=True
)


def _token_rows(views: list[dict[str, Any]], users: dict[int, str]) -> None:
    _view_table(
        "Personal access tokens",
        [
            ("id", "id"),
            ("user", lambda v: users.get(v["user_id"], v["user_id"])),
            ("name", "name"),
            ("prefix", lambda v: v["token_prefix"] + "…"),
            ("scopes", lambda v: ", ".join(v["scopes"])),
            ("expires", lambda v: v["expires_at"] or "never"),
            ("last used", lambda v: v["last_used_at"] or "never"),
            ("active", "active"),
            ("revoked", "revoked"),
        ],
        views,
    )


@tokens_app.command("create")
def tokens_create(
    username: Annotated[str, typer.Argument(help="The user the token belongs to (or their id).")],
    name: Annotated[str, typer.Option(help="Where the token is used, e.g. vscode-laptop.")],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="api, read_api, read_user or ai_features; repeat for several "
            "[default: ai_features and read_user; GitLab's editor extensions and its Language "
            "Server ask for api].",
        ),
    ] = None,
    expires_at: Annotated[
        str | None,
        typer.Option(
            help="YYYY-MM-DD; the token stops working at 00:00 UTC that day [default: the "
            "longest lifetime allowed, instance.pat_max_lifetime_days (365)]."
        ),
    ] = None,
    expires_in_days: Annotated[
        int | None, typer.Option(help="Instead of --expires-at: expire after this many days.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a token and print it once: it cannot be shown again (only its digest is kept)."""
    from datetime import timedelta

    from enclave.instance import accounts

    if expires_at is not None and expires_in_days is not None:
        _fail("give --expires-at or --expires-in-days, not both", 2)
    if expires_in_days is not None:
        expires_at = (date.today() + timedelta(days=expires_in_days)).isoformat()
    with _env() as env:

        def work(session: Session) -> dict[str, Any]:
            user = accounts.find_user(session, username)
            row, created = accounts.create_personal_access_token(
                session,
                user.id,
                name=name,
                scopes=scope or ["ai_features", "read_user"],
                expires_at=expires_at,
                actor=env.actor,
                max_lifetime_days=env.settings.instance.pat_max_lifetime_days,
            )
            return {
                **accounts.token_view(row),
                "username": user.username,
                "token": created.plaintext,
            }

        view = _run(env, work)
    if as_json:
        _print_json(view)
        return
    _token_rows([view], {view["user_id"]: view["username"]})
    out.print("\nToken (shown once, store it now):", markup=False)
    out.print(view["token"], markup=False)


@tokens_app.command("list")
def tokens_list(
    user: Annotated[
        str | None, typer.Option(help="Only this user's tokens (username or id).")
    ] = None,
    state: Annotated[str | None, typer.Option(help="active or inactive.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List tokens (never their values)."""
    from enclave.instance import accounts
    from enclave.instance.db.models import User

    if state not in (None, "active", "inactive"):
        _fail(f"--state must be active or inactive (got {state!r})", 2)
    with _env() as env:

        def work(session: Session) -> tuple[list[dict[str, Any]], dict[int, str]]:
            user_id = accounts.find_user(session, user).id if user is not None else None
            rows, _ = accounts.list_tokens(session, user_id=user_id, state=state)  # type: ignore[arg-type]
            names = {u.id: u.username for u in session.query(User).all()}
            return [accounts.token_view(r) for r in rows], names

        views, names = _run(env, work)
    _print_json(views) if as_json else _token_rows(views, names)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(help="Id of the token (see enclave tokens list).")],
    as_json: JsonOption = False,
) -> None:
    """Revoke a token; it stops working at once on every instance."""
    from enclave.instance import accounts

    with _env() as env:

        def work(session: Session) -> tuple[dict[str, Any], bool]:
            already = accounts.get_token(session, token_id).revoked
            token = accounts.revoke_token(session, token_id, env.actor)
            return accounts.token_view(token), already

        view, already = _run(env, work)
    if as_json:
        _print_json({**view, "already_revoked": already})
    elif already:
        out.print(
            f"Personal access token {token_id} ({view['name']}) was already revoked; "
            "nothing changed.",
            markup=False,
        )
    else:
        out.print(f"Revoked personal access token {token_id} ({view['name']}).", markup=False)


# ---------------------------------------------------------------------------------------------
secret_key_app = typer.Typer(
    help="The secret key that encrypts model API keys at rest (AES-256-GCM).",
    no_args_is_help=True,
)


@secret_key_app.command("rotate")
def secret_key_rotate(
    new_key_file: Annotated[
        Path | None,
        typer.Option(
            help="Use this key (base64 of 32 bytes) instead of generating one; required when "
            "ENCLAVE_SECRET_KEY is set."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Re-encrypt every stored API key with a new secret key.

    With the key file (default) the new key replaces keys/secret.key and the old one is kept in
    keys/secret.key.previous; running instances on the same data dir switch by themselves. With
    ENCLAVE_SECRET_KEY, set it to the new key and restart every instance afterwards.
    """
    from enclave.config import load_settings
    from enclave.instance.actor import Actor
    from enclave.instance.bootstrap import initialise
    from enclave.instance.secret_rotation import (
        RotationError,
        read_new_key_file,
        rotate_secret_key,
    )

    _configure_logging()
    try:
        settings = load_settings(stack=True)
        initialise(settings)
        key = read_new_key_file(str(new_key_file)) if new_key_file is not None else None
        result = rotate_secret_key(settings, Actor.cli(), key)
    except RotationError as exc:
        _fail(str(exc))
    view = {
        "re_encrypted": result.re_encrypted,
        "old_key_id": result.old_key_id,
        "new_key_id": result.new_key_id,
        "mode": "environment" if result.environment_mode else "key file",
    }
    if as_json:
        _print_json(view)
        return
    out.print(
        f"Re-encrypted {result.re_encrypted} API key(s): key {result.old_key_id} -> "
        f"{result.new_key_id}.",
        markup=False,
    )
    if result.environment_mode:
        out.print(
            f"Now set ENCLAVE_SECRET_KEY to the content of {new_key_file} and restart every "
            "instance; until then they cannot decrypt the model API keys.",
            markup=False,
        )
    else:
        out.print(
            f"The new key is in {settings.secret_key_file}; the old one stays in "
            f"{settings.secret_key_file}.previous until you delete it.",
            markup=False,
        )


# ---------------------------------------------------------------------------------------------
keys_app = typer.Typer(
    help="The instance's token signing keys (published in its JWKS for the gateway).",
    no_args_is_help=True,
)


def _time(value: int | None) -> str:
    from datetime import UTC, datetime

    if value is None:
        return ""
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")


def _key_rows(rows: list[dict[str, Any]]) -> None:
    _table(
        "Signing keys",
        ("kid", "alg", "state", "activates", "retires"),
        [
            (r["kid"], r["alg"], r["state"], _time(r["activate_at"]), _time(r["retire_at"]))
            for r in rows
        ],
    )


@keys_app.command("list")
def keys_list(as_json: JsonOption = False) -> None:
    """Every signing key and its state: active (signs), pending (published, signs from its
    activation time), retiring (published until its last token has expired), retired (no longer
    published; `enclave keys remove-retired` deletes it) or published."""
    from enclave.instance.keys import KeyStore, KeyStoreError

    with _env() as env:
        try:
            rows = KeyStore.load(env.settings.keys_dir).describe()
        except KeyStoreError as exc:
            _fail(str(exc))
    if as_json:
        _print_json(rows)
    else:
        _key_rows(rows)


@keys_app.command("rotate")
def keys_rotate(
    activate_after: Annotated[
        int,
        typer.Option(
            min=0,
            help="Seconds between publishing the new key and signing with it. The key is in "
            "the JWKS at once; the wait lets HTTP caches and gateways learn it first (Enclave's "
            "gateway also fetches the keys again when it meets an unknown key id, so 0 works "
            "with it).",
        ),
    ] = 300,
    as_json: JsonOption = False,
) -> None:
    """Create a new signing key: published now, signing after --activate-after seconds; the old
    key stays published until its last token has expired (activation + token lifetime + 5
    minutes). Running instances pick the change up by themselves within a few seconds."""
    from enclave.instance import audit
    from enclave.instance.keys import KeyStoreError, rotate

    with _env() as env:
        try:
            rotation = rotate(
                env.settings.keys_dir,
                activate_after_s=activate_after,
                token_lifetime_s=env.settings.instance.token_lifetime_s,
            )
        except KeyStoreError as exc:
            _fail(str(exc))
        view = {
            "old_kid": rotation.old_kid,
            "new_kid": rotation.new_kid,
            "activate_at": rotation.activate_at,
            "old_retire_at": rotation.old_retire_at,
        }
        _run(
            env,
            lambda session: audit.record(
                session, audit.SIGNING_KEY_ROTATED, rotation.new_kid, view, actor=env.actor
            ),
        )
    if as_json:
        _print_json(view)
        return
    out.print(
        f"New signing key {rotation.new_kid} is published; it signs from "
        f"{_time(rotation.activate_at)}. The old key {rotation.old_kid} stays published until "
        f"{_time(rotation.old_retire_at)}; after that, `enclave keys remove-retired` deletes it.",
        markup=False,
    )


@keys_app.command("remove-retired")
def keys_remove_retired(as_json: JsonOption = False) -> None:
    """Delete the key files of retired keys (no longer published, every token they signed has
    expired)."""
    from enclave.instance.keys import KeyStoreError, remove_retired

    with _env() as env:
        try:
            removed = remove_retired(env.settings.keys_dir)
        except KeyStoreError as exc:
            _fail(str(exc))
    if as_json:
        _print_json({"removed": removed})
    elif removed:
        out.print(f"Removed retired signing key(s): {', '.join(removed)}.", markup=False)
    else:
        out.print("No retired signing key to remove.", markup=False)


# ---------------------------------------------------------------------------------------------
audit_app = typer.Typer(help="The audit log: who changed what, and when.", no_args_is_help=True)


@audit_app.command("list")
def audit_list(
    event: Annotated[
        str | None, typer.Option(help="Only this event, e.g. user_blocked or ai_settings_updated.")
    ] = None,
    author: Annotated[
        str | None, typer.Option(help="Only changes by this user (username or id).")
    ] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time; events at or after it.")] = None,
    until: Annotated[
        str | None, typer.Option(help="ISO 8601 time; events at or before it.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many events.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List audit events, newest first (never a key or token in them)."""
    from enclave.instance import accounts, audit, audit_views

    if event is not None and event not in audit.ACTIONS:
        _fail(f"--event {event!r} is not an audit event; use {', '.join(sorted(audit.ACTIONS))}", 2)
    with _env() as env:

        def work(session: Session) -> list[dict[str, Any]]:
            after = audit_views.parse_time(since, "since")
            before = audit_views.parse_time(until, "until")
            author_id = accounts.find_user(session, author).id if author is not None else None
            rows, _ = audit_views.list_events(
                session,
                action=event,
                author_id=author_id,
                created_after=after,
                created_before=before,
                limit=limit,
            )
            return [audit_views.event_view(row) for row in rows]

        views = _run(env, work)
    if as_json:
        _print_json(views)
        return
    _view_table(
        "Audit events",
        [
            ("id", "id"),
            ("time", "created_at"),
            ("author", "author_name"),
            ("event", "event_name"),
            ("target", "target"),
            ("message", "message"),
            ("ip", "ip_address"),
        ],
        views,
    )


# ---------------------------------------------------------------------------------------------
def usage(
    since: Annotated[
        str | None, typer.Option(help="ISO 8601 time, inclusive [default: 30 days ago].")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="ISO 8601 time, exclusive [default: now].")
    ] = None,
    group_by: Annotated[
        str,
        typer.Option(help="Comma-separated: user, feature, model, day."),
    ] = "feature,model",
    user: Annotated[str | None, typer.Option(help="Only this user (username or id).")] = None,
    as_json: JsonOption = False,
) -> None:
    """AI usage: requests, errors, tokens in and out and mean latency, per user, feature,
    model and/or day, over every path (instance endpoints, the OpenAI-compatible API, direct
    access). A running instance writes its counts every instance.usage_flush_s (10 s)."""
    from enclave.instance import accounts
    from enclave.instance.api.usage import parse_groups, parse_window
    from enclave.instance.usage import row_view, usage_report

    with _env() as env:

        def work(session: Session) -> list[dict[str, Any]]:
            start, end = parse_window(since, until)
            groups = parse_groups(group_by, allow_user=True)
            user_id = accounts.find_user(session, user).id if user is not None else None
            rows = usage_report(session, since=start, until=end, group_by=groups, user_id=user_id)
            return [row_view(row) for row in rows]

        views = _run(env, work)
    if as_json:
        _print_json(views)
        return
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    keys = [("username" if g == "user" else g) for g in groups]
    columns = [*keys, "requests", "errors", "tokens in", "tokens out", "latency ms (mean)"]
    values = ["requests", "errors", "input_tokens", "output_tokens", "latency_ms_avg"]
    _table("AI usage", columns, [[v[k] for k in [*keys, *values]] for v in views])
    if not views:
        out.print("No AI usage in this period.", markup=False)


# ---------------------------------------------------------------------------------------------
def doctor(as_json: JsonOption = False) -> None:
    """Check the whole setup end to end and say what is wrong and how to fix it: configuration,
    database and schema, secret and signing keys, model API keys, feature map, the AI gateway,
    the gateway's trust in this instance and every model (through the gateway). Exit code 1
    when a check fails."""
    from enclave.config import load_settings
    from enclave.instance.doctor import run_checks

    _configure_logging()
    try:
        settings = load_settings(stack=True)
    except Exception as exc:
        _fail(f"the configuration does not load: {exc}")
    checks = asyncio.run(run_checks(settings))
    failed = any(check.status == "fail" for check in checks)
    if as_json:
        _print_json({"ok": not failed, "checks": [check.view() for check in checks]})
    else:
        table = Table(title="enclave doctor", title_justify="left")
        for column in ("", "check", "result", "how to fix"):
            table.add_column(column, overflow="fold")
        marks = {"ok": "[green]✓[/green]", "warn": "[yellow]![/yellow]", "fail": "[red]✗[/red]"}
        for check in checks:
            table.add_row(marks[check.status], check.name, check.message, check.fix or "")
        out.print(table)
        out.print("All checks passed." if not failed else "Some checks failed; see 'how to fix'.")
    if failed:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------
def backup(
    file: Annotated[Path, typer.Argument(help="The backup file to write (a new file; mode 0600).")],
) -> None:
    """Back up the instance: its database (SQLite's online backup, or pg_dump for PostgreSQL)
    and the keys a restore needs (the secret key that decrypts model API keys, the signing keys,
    the gateway routes secret). Instances may keep running. The file holds secrets: keep it
    like the keys directory. A secret key given as ENCLAVE_SECRET_KEY is not written into it."""
    from enclave.config import load_settings
    from enclave.instance.backup import BackupError
    from enclave.instance.backup import backup as make_backup

    _configure_logging()
    try:
        settings = load_settings()
        result = make_backup(settings, file.resolve(), progress=_progress)
    except BackupError as exc:
        _fail(str(exc))
    if settings.secret_key is not None:
        err.print(
            "The secret key comes from ENCLAVE_SECRET_KEY and is not in the backup: keep it "
            "with the backup, a restore needs it.",
            markup=False,
        )
    out.print(f"Backup of the {result.engine} instance written to {result.path}.", markup=False)


def restore(
    file: Annotated[Path, typer.Argument(help="A file written by `enclave backup`.")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace a database that already holds an instance, even while an instance "
            "answers on the configured address (stop them first whenever you can).",
        ),
    ] = False,
) -> None:
    """Restore a backup into the configured data dir and database (SQLite, or PostgreSQL with
    pg_restore --clean), then check that the signing key loads and every model API key
    decrypts. Refuses to replace an instance's data without --force."""
    from enclave.config import load_settings
    from enclave.instance.backup import BackupError
    from enclave.instance.backup import restore as restore_backup

    _configure_logging()
    try:
        settings = load_settings()
        result = restore_backup(settings, file.resolve(), force=force, progress=_progress)
    except BackupError as exc:
        _fail(str(exc))
    out.print(
        f"Restored the {result.engine} instance from {file}: {result.users} user(s), "
        f"{result.model_keys_checked} model API key(s) checked. Start the instance as usual.",
        markup=False,
    )


def _progress(message: str) -> None:
    err.print(f"- {message}", markup=False)


def register(app: typer.Typer) -> None:
    """Add the administration commands to the ``enclave`` command line."""
    app.add_typer(models_app, name="models")
    app.add_typer(features_app, name="features")
    app.add_typer(settings_app, name="settings")
    app.add_typer(users_app, name="users")
    app.add_typer(tokens_app, name="tokens")
    app.add_typer(secret_key_app, name="secret-key")
    app.add_typer(keys_app, name="keys")
    app.add_typer(audit_app, name="audit")
    app.command("doctor")(doctor)
    app.command("usage")(usage)
    app.command("backup")(backup)
    app.command("restore")(restore)

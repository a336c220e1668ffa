"""The ``enclave`` command line.

Every flag has an ``ENCLAVE_*`` environment variable and a config-file key behind it (see
:mod:`enclave.config`); flags win. Flags are handed to the role through the environment so that
server worker processes, which re-import the app, see exactly the same settings.
"""

from __future__ import annotations

import os
import shlex
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console

from enclave import __version__

app = typer.Typer(
    name="enclave",
    help="Enclave: AI coding features (code completion, chat, ...) on models you host yourself. "
    "An instance holds users, model configuration and signing keys and mints short-lived "
    "tokens; an AI gateway verifies them and calls your models.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
# soft_wrap: never break the printed curl or paths at the terminal width (copy-paste safe).
console = Console(stderr=True, highlight=False, soft_wrap=True)


def _set_env(name: str, value: object | None) -> None:
    """Pass a flag on as an ENCLAVE_* variable (None means: not given, keep env/file/default)."""
    if value is not None:
        os.environ[name] = str(value)


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="ENCLAVE_CONFIG",
            help="TOML config file with [instance], [gateway] and [model] tables "
            "(same keys as the ENCLAVE_<ROLE>__<KEY> variables).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Where state lives: SQLite database, signing keys, the admin token, logs "
            "[env ENCLAVE_DATA_DIR; default ./data].",
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(help="debug, info, warning or error [env ENCLAVE_LOG_LEVEL; default info]."),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            help="json (one object per line) or console [env ENCLAVE_LOG_FORMAT; default json]."
        ),
    ] = None,
) -> None:
    _set_env("ENCLAVE_CONFIG", config.resolve() if config else None)
    _set_env("ENCLAVE_DATA_DIR", data_dir.resolve() if data_dir else None)
    _set_env("ENCLAVE_LOG_LEVEL", log_level)
    _set_env("ENCLAVE_LOG_FORMAT", log_format)


@app.command()
def version() -> None:
    """Print Enclave's version."""
    typer.echo(__version__)


@app.command()
def up(
    host: Annotated[
        str | None,
        typer.Option(
            help="Address the instance and the gateway bind to. Keep the default unless "
            "other machines must reach them [config instance.host / gateway.host; 127.0.0.1]."
        ),
    ] = None,
    instance_port: Annotated[
        int | None, typer.Option(help="Instance port [config instance.port; 8080].")
    ] = None,
    gateway_port: Annotated[
        int | None,
        typer.Option(help="Gateway port (GitLab's is 5052) [config gateway.port; 5052]."),
    ] = None,
    model_port: Annotated[
        int | None,
        typer.Option(
            help="Embedded model port; 0 reuses the last run's port (data/model/port) when it "
            "is free, else picks a free loopback port [config model.port; 0]."
        ),
    ] = None,
    gguf: Annotated[
        Path | None,
        typer.Option(
            help="Serve this GGUF file instead of the bundled SmolLM2-135M-Instruct "
            "(for example a real coder model).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    model_threads: Annotated[
        int | None,
        typer.Option(help="CPU threads for the embedded model [default: cores - 1, at least 1]."),
    ] = None,
) -> None:
    """Run everything on this machine: the embedded model, the instance and the gateway.

    On first start this creates the data dir, the database, the signing key, an admin user
    with a personal access token (saved to <data-dir>/admin-token.txt) and a model record for
    the embedded model mapped to code completions. Stop with Ctrl-C.
    """
    from enclave.config import load_settings
    from enclave.model.requant import PreparationProgress
    from enclave.stack import mark_stopped, write_stack
    from enclave.supervisor import (
        StartupFailed,
        choose_model_port,
        ensure_routes_secret,
        make_plan,
        stack_record,
        start_all,
        stop_all,
        supervise,
    )

    _set_env("ENCLAVE_MODEL__THREADS", model_threads)
    settings = load_settings()
    # The secret the gateway shows the instance to read the feature→model routes (OpenAI API):
    # a configured file wins, else one generated once into the data dir.
    routes_secret_file = (
        settings.instance.gateway_routes_secret_file
        or settings.gateway.gateway_routes_secret_file
        or ensure_routes_secret(settings.gateway_routes_secret_default_file)
    )
    # One egress allow-list for both roles: the gateway's when it is configured (it enforces
    # it), else the instance's (the two defaults are the same).
    egress_allow = (
        settings.gateway.model_egress_allow
        if "model_egress_allow" in settings.gateway.model_fields_set
        else settings.instance.model_egress_allow
    )
    # Flags win, then ENCLAVE_* and the config file (load_settings), then the defaults.
    plan = make_plan(
        instance_host=host or settings.instance.host,
        instance_port=instance_port or settings.instance.port,
        gateway_host=host or settings.gateway.host,
        gateway_port=gateway_port or settings.gateway.port,
        # Same port as last time when it is free: the instance has the model's endpoint stored.
        model_port=choose_model_port(
            settings.model_dir / "port",
            model_port if model_port is not None else settings.model.port,
        ),
        gguf=gguf,
        routes_secret_file=routes_secret_file,
        model_egress_allow=egress_allow,
    )
    log_dir = settings.data_dir / "logs"
    console.print(f"Starting Enclave (data dir {settings.data_dir}, logs in {log_dir})")
    # Every other command finds this stack here (enclave.stack), whatever its ports.
    record = stack_record(plan, gguf)
    write_stack(settings.data_dir, record)
    status = console.status("starting the model")
    preparing = PreparationProgress(settings.model_dir, console.print)

    def progress(role: str, elapsed: float) -> None:
        if role == "model" and preparing.poll():
            status.update(f"preparing the bundled model: {preparing.percent} % ({elapsed:.0f} s)")
            return
        status.update(f"waiting for the {role} to be ready ({elapsed:.0f} s)")

    # Ctrl-C and SIGTERM both mean "stop everything in order". Install the handlers explicitly:
    # a process started in the background by a non-interactive shell inherits SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with status:
            start_all(plan, log_dir, progress)
    except StartupFailed as exc:
        mark_stopped(settings.data_dir, record)
        console.print(f"[red]Enclave did not start:[/red] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        mark_stopped(settings.data_dir, record)
        console.print("Interrupted during start-up; stopped.")
        raise typer.Exit(130) from None

    events = _supervisor_events(log_dir / "supervisor.log")
    _print_welcome(
        plan.instance_url,
        plan.gateway_url,
        plan.model_url,
        settings.admin_token_file,
        settings.admin_password_file,
    )
    try:  # from here on, Ctrl-C always means "stop in order"
        for role in plan.roles:
            events("role_started", {"role": role.name, "pid": role.pid})
        stopped = supervise(plan, log_dir, events)
        console.print(
            f"[red]The {stopped.name} kept crashing; giving up[/red] "
            f"(log: {stopped.log_path}):\n{stopped.log_tail()}"
        )
        code = 1
    except KeyboardInterrupt:
        console.print("\nStopping Enclave ...")
        code = 0
    stop_all(plan)
    mark_stopped(settings.data_dir, record)
    console.print("Stopped.")
    raise typer.Exit(code)


def _supervisor_events(path: Path) -> Callable[[str, dict[str, Any]], None]:
    """Each supervisor event as one JSON log line in ``path`` and one line on the console."""
    import orjson

    from enclave.common.logging import redact

    def emit(event: str, fields: dict[str, Any]) -> None:
        line = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "error" if event in ("role_exited", "role_gave_up") else "info",
            "event": event,
            "component": "supervisor",
            **redact(fields),
        }
        with path.open("ab") as handle:
            handle.write(orjson.dumps(line) + b"\n")
        details = " ".join(f"{k}={v}" for k, v in fields.items())
        console.print(f"[supervisor] {event} {details}", markup=False)

    return emit


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _print_welcome(
    instance_url: str, gateway_url: str, model_url: str, token_file: Path, password_file: Path
) -> None:
    token_note = (
        f"{token_file} (created at first start; keep it safe)"
        if token_file.exists()
        else f"{token_file} is gone: create a new token with the admin API"
    )
    body = (
        '{"current_file": {"file_name": "calc.py", '
        '"content_above_cursor": "def add(a, b):\\n    ", "content_below_cursor": ""}, '
        '"intent": "completion", "stream": false}'
    )
    curl = (
        f"curl -s {instance_url}/api/v4/code_suggestions/completions \\\n"
        f'    -H "PRIVATE-TOKEN: $(cat {shlex.quote(str(token_file))})" \\\n'
        f"    -H 'Content-Type: application/json' \\\n"
        f"    -d {shlex.quote(body)}"
    )
    console.print(
        "\n[bold green]Enclave is up.[/bold green]\n"
        f"  instance   {instance_url}   (OpenAPI: {instance_url}/openapi.json)\n"
        f"  gateway    {gateway_url}\n"
        f"  model      {model_url}   (llama.cpp server, API key required)\n"
        f"  admin personal access token: {token_note}\n"
        f"  web UI     {instance_url}/admin   (user root; first password in {password_file}, "
        "or set one with `enclave users set-password root`)\n"
        f"  OpenAI-compatible API: {gateway_url}/v1 (token and base_url from POST "
        f"{instance_url}/api/v4/ai/openai/direct_access with the PAT)\n\n"
        "Ask the instance for a code completion:\n\n"
        f"{curl}\n\nPress Ctrl-C to stop."
    )


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")] = False,
) -> None:
    """Show the stack: each role (instance, gateway, model), its URL and health, and the model
    it serves. Uses the addresses `enclave up` recorded in the data dir (flags and ENCLAVE_*
    variables win). Exit code 1 when a role does not answer."""
    import json

    from enclave.config import load_settings
    from enclave.status import stack_status

    try:
        settings = load_settings(stack=True)
    except Exception as exc:
        console.print(f"Error: the configuration does not load: {exc}", markup=False)
        raise typer.Exit(1) from None
    report = stack_status(settings)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        out = Console(highlight=False, soft_wrap=True)
        out.print(f"Stack from {report['source']}", markup=False)
        supervisor = report["supervisor"]
        if supervisor is not None:
            state = "running" if supervisor["running"] else "not running"
            out.print(f"  enclave up (pid {supervisor['pid']}): {state}", markup=False)
        for role in report["roles"]:
            mark = "ok  " if role["healthy"] else "DOWN"
            out.print(f"  {mark} {role['role']:<9} {role['url']}  {role['detail']}", markup=False)
        model = report["model"]
        out.print(
            f"  model: {model['file']} (served as {model['served_name']}, "
            f"{model['identifier']}, family {model['family']})",
            markup=False,
        )
    if not report["healthy"]:
        raise typer.Exit(1)


@app.command()
def instance(
    host: Annotated[
        str | None, typer.Option(help="Bind address [env ENCLAVE_INSTANCE__HOST; 127.0.0.1].")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port [env ENCLAVE_INSTANCE__PORT; 8080].")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes [env ENCLAVE_INSTANCE__WORKERS; 1].")
    ] = None,
    external_url: Annotated[
        str | None,
        typer.Option(
            help="URL the gateway and clients use to reach this instance; the `iss` of its "
            "tokens [env ENCLAVE_INSTANCE__EXTERNAL_URL; http://<host>:<port>]."
        ),
    ] = None,
    gateway_url: Annotated[
        str | None,
        typer.Option(
            help="AI gateway to forward requests to [env ENCLAVE_INSTANCE__GATEWAY_URL; "
            "http://127.0.0.1:5052]."
        ),
    ] = None,
) -> None:
    """Run the instance alone: users, tokens, model registry, signing keys, GitLab REST API.

    Initialises the data dir and database on first start (migrations run on every start).
    """
    _set_env("ENCLAVE_INSTANCE__HOST", host)
    _set_env("ENCLAVE_INSTANCE__PORT", port)
    _set_env("ENCLAVE_INSTANCE__WORKERS", workers)
    _set_env("ENCLAVE_INSTANCE__EXTERNAL_URL", external_url)
    _set_env("ENCLAVE_INSTANCE__GATEWAY_URL", gateway_url)

    from enclave.common.logging import configure_logging
    from enclave.common.serve import header_limits, serve
    from enclave.config import load_settings
    from enclave.instance.bootstrap import initialise

    settings = load_settings()
    configure_logging("instance", settings.log_level, settings.log_format)
    # Initialise once here, before any worker starts, so workers never race on first start.
    initialise(settings)
    serve(
        "enclave.instance.app:create_app_from_env",
        settings.instance.host,
        settings.instance.port,
        limits=header_limits(settings.instance),
        workers=settings.instance.workers,
        factory=True,
    )


@app.command()
def gateway(
    host: Annotated[
        str | None, typer.Option(help="Bind address [env ENCLAVE_GATEWAY__HOST; 127.0.0.1].")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port [env ENCLAVE_GATEWAY__PORT; 5052].")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes [env ENCLAVE_GATEWAY__WORKERS; 1].")
    ] = None,
    issuer_url: Annotated[
        str | None,
        typer.Option(
            help="The instance this gateway trusts; keys come from its "
            "/.well-known/openid-configuration [env ENCLAVE_GATEWAY__ISSUER_URL; "
            "http://127.0.0.1:8080]."
        ),
    ] = None,
    jwks_file: Annotated[
        Path | None,
        typer.Option(
            help="Static JWKS file to trust instead of fetching keys (offline setups) "
            "[env ENCLAVE_GATEWAY__JWKS_FILE].",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Run the AI gateway alone: verifies instance tokens, builds prompts, calls models."""
    _set_env("ENCLAVE_GATEWAY__HOST", host)
    _set_env("ENCLAVE_GATEWAY__PORT", port)
    _set_env("ENCLAVE_GATEWAY__WORKERS", workers)
    _set_env("ENCLAVE_GATEWAY__ISSUER_URL", issuer_url)
    _set_env("ENCLAVE_GATEWAY__JWKS_FILE", jwks_file.resolve() if jwks_file else None)

    from enclave.common.logging import configure_logging
    from enclave.common.serve import header_limits, serve
    from enclave.config import load_settings

    settings = load_settings()
    configure_logging("gateway", settings.log_level, settings.log_format)
    serve(
        "enclave.gateway.app:create_app_from_env",
        settings.gateway.host,
        settings.gateway.port,
        limits=header_limits(settings.gateway),
        workers=settings.gateway.workers,
        factory=True,
    )


@app.command()
def model(
    host: Annotated[
        str | None, typer.Option(help="Bind address [env ENCLAVE_MODEL__HOST; 127.0.0.1].")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port; 0 picks a free one [env ENCLAVE_MODEL__PORT; 0]."),
    ] = None,
    gguf: Annotated[
        Path | None,
        typer.Option(
            help="GGUF file to serve [env ENCLAVE_MODEL__GGUF; the bundled SmolLM2-135M-Instruct].",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads [env ENCLAVE_MODEL__THREADS; cores - 1, at least 1]."),
    ] = None,
    ctx_size: Annotated[
        int | None,
        typer.Option(help="Context window in tokens [env ENCLAVE_MODEL__CTX_SIZE; 4096]."),
    ] = None,
    served_name: Annotated[
        str | None,
        typer.Option(
            help="Model id the server answers to [env ENCLAVE_MODEL__SERVED_NAME; smollm2]."
        ),
    ] = None,
) -> None:
    """Run the embedded model alone: llama.cpp's OpenAI-compatible server on loopback.

    It requires the API key stored in <data-dir>/model/api-key (generated on first start), so
    only the gateway, which receives the key from the instance, can call it.
    """
    _set_env("ENCLAVE_MODEL__HOST", host)
    _set_env("ENCLAVE_MODEL__PORT", port)
    _set_env("ENCLAVE_MODEL__GGUF", gguf.resolve() if gguf else None)
    _set_env("ENCLAVE_MODEL__THREADS", threads)
    _set_env("ENCLAVE_MODEL__CTX_SIZE", ctx_size)
    _set_env("ENCLAVE_MODEL__SERVED_NAME", served_name)

    from enclave.common.logging import configure_logging
    from enclave.config import load_settings
    from enclave.model.runner import run_model

    settings = load_settings()
    configure_logging("model", settings.log_level, settings.log_format)
    run_model(settings)


from enclave.admin_cli import register as _register_admin_commands  # noqa: E402

_register_admin_commands(app)

from enclave.account_cli import register as _register_account_commands  # noqa: E402

_register_account_commands(app)

"""The administration CLI (enclave models|features|settings|users|tokens|secret-key|doctor),
run in-process against the database of a data dir, and secret key rotation."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import typer
from aiohttp import web
from sqlalchemy import select
from typer.testing import CliRunner

from enclave import admin_cli
from enclave.cli import app
from enclave.config import EnclaveSettings
from enclave.instance.db import SelfHostedModel, make_engine, make_session_factory
from enclave.instance.db.models import FeatureSetting
from enclave.instance.features import API_TOKEN_PURPOSE
from enclave.instance.secrets import SecretBox, load_secret_box, parse_secret_key
from tests.unit.instance.conftest import Backend, FakeGateway, LiveInstance, make_settings

KEY = "enclkey-cli-model-key-0123456789abcdef"


class Cli:
    def __init__(self, settings: EnclaveSettings, monkeypatch: pytest.MonkeyPatch) -> None:
        self.settings = settings
        monkeypatch.setattr(admin_cli, "_configure_logging", lambda: None)
        monkeypatch.setenv("ENCLAVE_DATA_DIR", str(settings.data_dir))
        monkeypatch.setenv("COLUMNS", "250")
        if settings.instance.database_url:
            monkeypatch.setenv("ENCLAVE_DATABASE_URL", settings.instance.database_url)
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Any:
        # Log lines go to the capture (the real CLI sends them to stderr), and must be clean.
        with structlog.testing.capture_logs() as logs:
            result = self.runner.invoke(app, list(args), input=input, catch_exceptions=False)
        assert KEY not in repr(logs)
        return result

    def json(self, *args: str) -> Any:
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture()
def cli(tmp_path: Path, db_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(make_settings(tmp_path / "data"), monkeypatch)


def test_every_option_has_help() -> None:
    root: Any = typer.main.get_command(app)
    missing: list[str] = []
    seen: list[str] = []

    def walk(command: Any, path: str) -> None:
        seen.append(path)
        if not (command.help or command.short_help):
            missing.append(path)
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help" and not param.help:
                missing.append(f"{path} {param.opts[0]}")
            if param.param_type_name == "argument" and not getattr(param, "help", None):
                missing.append(f"{path} {param.name}")
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    for name in ("models", "features", "settings", "users", "tokens", "secret-key", "doctor"):
        walk(root.commands[name], name)
    assert missing == []
    assert "models test" in seen and "tokens revoke" in seen and "secret-key rotate" in seen


def test_register_two_models_map_features_and_manage_users(cli: Cli, tmp_path: Path) -> None:
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY + "\n")
    first = cli.json(
        "models", "add", "--name", "vllm-mistral", "--family", "mistral",
        "--endpoint", "http://10.0.0.1:8000/v1", "--identifier", "custom_openai/mistral",
        "--api-key-file", str(key_file),
    )  # fmt: skip
    assert first["has_api_token"] is True and KEY not in json.dumps(first)
    second = cli(
        "models", "add", "--name", "ollama-qwen", "--family", "qwen",
        "--endpoint", "http://10.0.0.2:11434/v1", "--identifier", "custom_openai/qwen2.5-coder",
    )  # fmt: skip
    assert second.exit_code == 0
    assert "ollama-qwen" in second.stdout and "EXPERIMENTAL" in second.stdout
    assert [m["name"] for m in cli.json("models", "list")] == ["vllm-mistral", "ollama-qwen"]

    assert cli("features", "set", "code_completions", "--model", "ollama-qwen").exit_code == 0
    assert cli("features", "set", "duo_chat", "--model", "vllm-mistral").exit_code == 0
    features = {f["feature"]: f for f in cli.json("features", "list")}
    assert features["code_completions"]["self_hosted_model"]["name"] == "ollama-qwen"
    assert features["duo_chat_fix_code"]["effective_self_hosted_model"]["name"] == "vllm-mistral"
    assert features["duo_chat_fix_code"]["inherited_from"] == "duo_chat"

    refused = cli("models", "delete", "vllm-mistral")
    assert refused.exit_code == 1
    assert refused.stderr.strip() == (
        "Error: self-hosted model 'vllm-mistral' is used by the features duo_chat; assign "
        "another model to them (or disable them) first, then delete it"
    )
    bad = cli(
        "features", "set", "review_merge_request", "--model", "ollama-qwen", "--provider", "bogus"
    )
    assert bad.exit_code == 1
    assert "provider 'bogus' is unknown" in bad.stderr

    user = cli.json("users", "add", "alice", "--email", "alice@example.com", "--name", "Alice")
    assert user["username"] == "alice" and user["is_admin"] is False
    duplicate = cli("users", "add", "alice", "--email", "other@example.com")
    assert duplicate.exit_code == 1 and "Username has already been taken" in duplicate.stderr
    created = cli.json("tokens", "create", "alice", "--name", "vscode", "--expires-in-days", "30")
    assert created["token"].startswith("glpat-")
    assert created["scopes"] == ["ai_features", "read_user"]
    listed = cli.json("tokens", "list", "--user", "alice")
    assert [t["id"] for t in listed] == [created["id"]]
    assert created["token"] not in json.dumps(listed)
    revoked = cli.json("tokens", "revoke", str(created["id"]))
    assert revoked["revoked"] is True and revoked["active"] is False
    assert cli.json("tokens", "list", "--user", "alice", "--state", "active") == []
    assert [u["username"] for u in cli.json("users", "list")] == ["root", "alice"]


def test_features_set_and_clear_a_fallback_model(cli: Cli) -> None:
    for name, family in (("primary", "mistral"), ("spare", "qwen"), ("gemma", "codegemma")):
        added = cli(
            "models", "add", "--name", name, "--family", family,
            "--endpoint", "http://10.0.0.3:8000/v1", "--identifier", f"custom_openai/{name}",
        )  # fmt: skip
        assert added.exit_code == 0, added.stderr
    views = cli.json(
        "features", "set", "duo_chat", "--model", "primary", "--fallback-model", "spare"
    )
    assert views[0]["fallback_model"]["name"] == "spare"
    listed = cli("features", "list")
    assert "fallback" in listed.stdout and "spare" in listed.stdout
    features = {f["feature"]: f for f in cli.json("features", "list")}
    assert features["duo_chat"]["fallback_model"]["name"] == "spare"
    assert features["duo_chat_fix_code"]["effective_fallback_model"]["name"] == "spare"
    refused = cli("models", "delete", "spare")
    assert refused.exit_code == 1
    assert "duo_chat (as its fallback model)" in refused.stderr
    same = cli("features", "set", "duo_chat", "--model", "primary", "--fallback-model", "primary")
    assert same.exit_code == 1 and "names the primary model 'primary'" in same.stderr
    bad = cli("features", "set", "duo_chat", "--model", "primary", "--fallback-model", "gemma")
    assert bad.exit_code == 1 and "CodeGemma is incompatible" in bad.stderr
    both = cli(
        "features", "set", "duo_chat", "--model", "primary", "--fallback-model", "spare",
        "--no-fallback",
    )  # fmt: skip
    assert both.exit_code == 2
    kept = cli.json("features", "set", "duo_chat", "--model", "primary")
    assert kept[0]["fallback_model"]["name"] == "spare"
    cleared = cli.json("features", "set", "duo_chat", "--model", "primary", "--no-fallback")
    assert cleared[0]["fallback_model"] is None
    assert cli("models", "delete", "spare").exit_code == 0


def test_invalid_input_is_refused_with_the_same_messages(cli: Cli) -> None:
    cases = [
        (
            ["models", "add", "--name", "m", "--family", "foo", "--identifier", "custom_openai/m",
             "--endpoint", "http://h/v1"],
            "model family 'foo' is unknown",
        ),
        (
            ["models", "add", "--name", "m", "--family", "mistral", "--identifier",
             "custom_openai/m", "--endpoint", "ftp://h/v1"],
            "endpoint must be an http:// or https:// URL (got scheme 'ftp'",
        ),
        (
            ["models", "add", "--name", "m", "--family", "mistral", "--identifier", "azure/x",
             "--endpoint", "http://h/v1"],
            "identifier 'azure/x' does not fit provider 'api'",
        ),
        (["settings", "set", "--timeout", "30"], "between 60 and 600 (got 30)"),
        (["tokens", "create", "root", "--name", "x", "--scope", "sudo"], "scopes sudo are unknown"),
        (["features", "set", "nope", "--provider", "disabled"], "feature 'nope' is unknown"),
    ]  # fmt: skip
    for args, message in cases:
        result = cli(*args)
        assert result.exit_code == 1, args
        assert message in result.stderr, (args, result.stderr)


def test_models_add_and_update_with_region_project_and_location(cli: Cli) -> None:
    bedrock = cli.json(
        "models", "add", "--name", "claude-eu", "--family", "claude_3", "--provider", "bedrock",
        "--identifier", "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
        "--region", "eu-central-1",
    )  # fmt: skip
    assert bedrock["endpoint"] == "https://bedrock-runtime.eu-central-1.amazonaws.com"
    assert bedrock["region"] == "eu-central-1"
    vertex = cli.json(
        "models", "add", "--name", "gemini", "--family", "general", "--provider", "vertex_ai",
        "--identifier", "vertex_ai/gemini-2.5-flash", "--project", "my-proj-1",
        "--location", "us-east5",
    )  # fmt: skip
    assert (vertex["project"], vertex["location"]) == ("my-proj-1", "us-east5")
    moved = cli.json("models", "update", "gemini", "--location", "global")
    assert moved["endpoint"] == (
        "https://aiplatform.googleapis.com/v1/projects/my-proj-1/locations/global"
    )
    refused = cli(
        "models", "add", "--name", "x", "--family", "claude_3", "--provider", "anthropic",
        "--identifier", "anthropic/claude-sonnet-4-5", "--project", "my-proj-1",
    )  # fmt: skip
    assert refused.exit_code == 1
    assert "project is for Google Vertex AI models (provider vertex_ai)" in refused.stderr


def _gateway_answers(gateway: FakeGateway, status: int, body: object) -> None:
    async def handler(request: web.Request, fake: FakeGateway) -> web.StreamResponse:
        return web.json_response(body, status=status)

    gateway.handler = handler


def test_models_test_and_settings(cli: Cli, fresh_gateway: FakeGateway) -> None:
    cli(
        "models", "add", "--name", "m1", "--family", "llama3", "--endpoint", "http://10.0.0.3/v1",
        "--identifier", "custom_openai/llama3",
    )  # fmt: skip
    settings = cli.json("settings", "set", "--gateway-url", fresh_gateway.url, "--timeout", "90")
    assert settings["ai_gateway_url"] == fresh_gateway.url
    assert settings["ai_gateway_timeout_seconds"] == 90.0
    _gateway_answers(fresh_gateway, 200, "ok")
    ok = cli("models", "test", "m1")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith("OK m1: Successfully connected")
    assert fresh_gateway.requests[-1].raw_path == "/v1/prompts/model_configuration%2Fcheck"
    _gateway_answers(fresh_gateway, 421, {"detail": "401: invalid key"})
    failed = cli("models", "test", "m1", "--json")
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["model_status"] == 401
    assert cli.json("settings", "set", "--gateway-url", "default")["ai_gateway_url_source"] == (
        "configuration"
    )


def test_secret_key_rotation_re_encrypts_and_running_instances_follow(
    cli: Cli, tmp_path: Path
) -> None:
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY)
    cli(
        "models", "add", "--name", "keyed", "--family", "gpt", "--endpoint", "http://10.0.0.4/v1",
        "--identifier", "custom_openai/gpt-oss", "--api-key-file", str(key_file),
    )  # fmt: skip
    settings = cli.settings
    running = load_secret_box(settings)  # what a running instance holds
    old_key = settings.secret_key_file.read_text().strip()
    result = cli.json("secret-key", "rotate")
    assert result["re_encrypted"] == 1 and result["mode"] == "key file"
    assert result["old_key_id"] == running.key_id.hex() != result["new_key_id"]
    assert settings.secret_key_file.read_text().strip() != old_key
    assert (settings.keys_dir / "secret.key.previous").read_text().strip() == old_key
    assert not (settings.keys_dir / "secret.key.next").exists()
    sessions = make_session_factory(make_engine(settings.database_url))
    with sessions() as session:
        [model] = session.query(SelfHostedModel).all()
        assert model.api_token_encrypted is not None
        blob = model.api_token_encrypted
    new_box = SecretBox(parse_secret_key(settings.secret_key_file.read_text()))
    assert new_box.decrypt(blob, API_TOKEN_PURPOSE) == KEY
    # The running instance's box meets an unknown key id, re-reads the key files, and works.
    assert running.decrypt(blob, API_TOKEN_PURPOSE) == KEY
    [listed] = cli.json("models", "list")
    assert listed["name"] == "keyed" and listed["has_api_token"] is True


def test_secret_key_rotation_in_environment_mode(
    tmp_path: Path, db_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = base64.b64encode(os.urandom(32)).decode()
    new = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("ENCLAVE_SECRET_KEY", old)
    cli = Cli(make_settings(tmp_path / "data"), monkeypatch)
    key_file = tmp_path / "model.key"
    key_file.write_text(KEY)
    cli(
        "models", "add", "--name", "keyed", "--family", "gpt", "--endpoint", "http://10.0.0.4/v1",
        "--identifier", "custom_openai/gpt-oss", "--api-key-file", str(key_file),
    )  # fmt: skip
    refused = cli("secret-key", "rotate")
    assert refused.exit_code == 1
    assert "ENCLAVE_SECRET_KEY is set, so the new key must come from you" in refused.stderr
    new_file = tmp_path / "new.key"
    new_file.write_text(new + "\n")
    done = cli("secret-key", "rotate", "--new-key-file", str(new_file))
    assert done.exit_code == 0, done.output
    assert "set ENCLAVE_SECRET_KEY to the content of" in done.stdout
    sessions = make_session_factory(make_engine(cli.settings.database_url))
    with sessions() as session:
        [model] = session.query(SelfHostedModel).all()
        assert model.api_token_encrypted is not None
        assert (
            SecretBox(parse_secret_key(new)).decrypt(model.api_token_encrypted, API_TOKEN_PURPOSE)
            == KEY
        )


@pytest.fixture()
def doctor_env(
    instance: LiveInstance, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cli]:
    cli = Cli(instance.settings, monkeypatch)
    monkeypatch.setenv("ENCLAVE_INSTANCE__EXTERNAL_URL", instance.url)
    monkeypatch.setenv("ENCLAVE_GATEWAY_URL", gateway.url)
    yield cli


def test_doctor_passes_on_a_working_setup(doctor_env: Cli, fresh_gateway: FakeGateway) -> None:
    result = doctor_env("doctor", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    for name in (
        "database",
        "schema",
        "secret key",
        "model API keys",
        "signing key",
        "features",
        "instance",
        "AI gateway",
        "end-to-end completion",
        "model embedded-smollm2",
    ):
        assert statuses[name] == "ok", (name, report)
    paths = [request.path for request in fresh_gateway.requests]
    assert "/v2/code/completions" in paths
    assert "/v1/prompts/model_configuration/check" in paths


def test_doctor_says_what_is_wrong_and_how_to_fix_it(
    doctor_env: Cli, fresh_gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    _gateway_answers(fresh_gateway, 401, {"error": "Forbidden by auth provider"})
    refused = doctor_env("doctor", "--json")
    assert refused.exit_code == 1
    checks = {c["name"]: c for c in json.loads(refused.stdout)["checks"]}
    e2e = checks["end-to-end completion"]
    assert e2e["status"] == "fail"
    assert "refused this instance's token" in e2e["message"]
    assert "ENCLAVE_GATEWAY__ISSUER_URL" in e2e["fix"]
    monkeypatch.setenv("ENCLAVE_GATEWAY_URL", "http://127.0.0.1:9")
    down = doctor_env("doctor")
    assert down.exit_code == 1
    assert "cannot reach the AI gateway at http://127.0.0.1:9" in down.stdout
    assert "Some checks failed" in down.stdout


def test_doctor_reports_families_gitlabs_gateway_refuses(
    doctor_env: Cli, fresh_gateway: FakeGateway
) -> None:
    """Pointed at GitLab's AI gateway (told by its 404 on /v1/models), the embedded general
    model for code completions and generations is reported, with the families that work."""
    fresh_gateway.enclave = False
    result = doctor_env("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    check = checks["GitLab AI gateway"]
    assert check["status"] == "fail", check
    assert "is GitLab's AI gateway, not Enclave's" in check["message"]
    assert "code_completions uses a general model" in check["message"]
    assert "code_generations uses a general model" in check["message"]
    assert "codestral" in check["message"] and "enclave features set" in check["fix"]
    assert result.exit_code == 1


def test_doctor_says_nothing_of_families_with_enclaves_gateway(
    doctor_env: Cli, fresh_gateway: FakeGateway
) -> None:
    result = doctor_env("doctor", "--json")
    names = {c["name"] for c in json.loads(result.stdout)["checks"]}
    assert "GitLab AI gateway" not in names


def test_vendored_features_need_a_vendored_gateway(cli: Cli) -> None:
    refused = cli("features", "set", "duo_chat", "--provider", "vendored")
    assert refused.exit_code == 1
    assert "needs a vendored AI gateway" in refused.stderr
    settings = cli.json("settings", "set", "--vendored-gateway-url", "https://shared.example")
    assert settings["vendored_ai_gateway_url"] == "https://shared.example"
    [view] = cli.json("features", "set", "duo_chat", "--provider", "vendored")
    assert (view["gateway"], view["gateway_url"]) == ("vendored", "https://shared.example")
    table = cli("features", "list")
    assert table.exit_code == 0, table.output
    assert "https://shared.example" in table.stdout
    back = cli.json("settings", "set", "--vendored-gateway-url", "default")
    assert back["vendored_ai_gateway_url"] is None


def test_doctor_checks_the_vendored_gateway_and_the_features_it_serves(
    doctor_env: Cli, fresh_gateway: FakeGateway, instance: LiveInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    with instance.ctx.sessions() as session:
        row = session.scalar(
            select(FeatureSetting).where(FeatureSetting.feature == "glab_ask_git_command")
        )
        before = (row.provider, row.self_hosted_model_id) if row is not None else None
    instance.set_feature("glab_ask_git_command", "vendored")
    try:
        unconfigured = {
            c["name"]: c for c in json.loads(doctor_env("doctor", "--json").stdout)["checks"]
        }
        assert unconfigured["vendored features"]["status"] == "fail"
        assert "--vendored-gateway-url" in unconfigured["vendored features"]["fix"]

        # The shared gateway: here the same fake, which answers its health check.
        monkeypatch.setenv("ENCLAVE_INSTANCE__VENDORED_GATEWAY_URL", fresh_gateway.url)
        checks = {c["name"]: c for c in json.loads(doctor_env("doctor", "--json").stdout)["checks"]}
        assert checks["vendored AI gateway"]["status"] == "ok"
        assert checks["vendored features"]["status"] == "ok"
        assert "glab_ask_git_command" in checks["vendored features"]["message"]

        monkeypatch.setenv("ENCLAVE_INSTANCE__VENDORED_GATEWAY_URL", "http://127.0.0.1:9")
        down = {c["name"]: c for c in json.loads(doctor_env("doctor", "--json").stdout)["checks"]}
        assert down["vendored AI gateway"]["status"] == "fail"
        assert "cannot reach the vendored AI gateway" in down["vendored AI gateway"]["message"]
    finally:
        if before is None:
            instance.set_feature("glab_ask_git_command", "unassigned")
        else:
            instance.set_feature("glab_ask_git_command", before[0], before[1])

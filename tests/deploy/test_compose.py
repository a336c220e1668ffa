"""deploy/compose.yaml: valid against the Compose Specification schema (vendored, offline), with
real settings only, secrets from files, and nothing but the two front doors published (on
loopback), the back end on an internal network."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import pytest
import yaml

from tests.deploy.conftest import DEPLOY, SCHEMAS, parse_settings, unknown_settings

COMPOSE = DEPLOY / "compose.yaml"


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def compose_validator() -> Any:
    schema = json.loads((SCHEMAS / "compose" / "compose-spec.json").read_text())
    return jsonschema_rs.validator_for(schema)


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    errors = [
        f"{'/'.join(map(str, e.instance_path))}: {e.message}"
        for e in compose_validator().iter_errors(compose())
    ]
    assert not errors, "\n".join(errors)


def test_the_compose_schema_check_catches_mistakes() -> None:
    broken = compose()
    broken["services"]["gateway"]["healthcheck"]["intervall"] = "10s"
    broken["services"]["instance"]["ports"] = "8080"
    assert len(list(compose_validator().iter_errors(broken))) >= 2


def test_compose_has_every_part() -> None:
    services = compose()["services"]
    assert set(services) == {"instance", "gateway", "model", "postgres", "redis"}
    commands = {name: services[name].get("command") for name in ("instance", "gateway", "model")}
    assert commands == {"instance": ["instance"], "gateway": ["gateway"], "model": ["model"]}


@pytest.mark.parametrize("service", ["instance", "gateway", "model"])
def test_enclave_settings_exist_and_parse(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: str(v) for k, v in compose()["services"][service]["environment"].items()}
    assert not unknown_settings(env)
    settings = parse_settings(env, monkeypatch)
    if service == "gateway":
        instance_env = compose()["services"]["instance"]["environment"]
        assert settings.gateway.issuer_url == instance_env["ENCLAVE_INSTANCE__EXTERNAL_URL"]
    if service == "instance":
        assert settings.instance.embedded_model_endpoint == "http://model:8000/v1"


def test_only_the_front_doors_are_published_and_only_on_loopback() -> None:
    data = compose()
    published = {name: s.get("ports", []) for name, s in data["services"].items() if "ports" in s}
    assert published == {
        "instance": ["127.0.0.1:8080:8080"],
        "gateway": ["127.0.0.1:5052:5052"],
    }
    assert data["networks"]["backend"]["internal"] is True
    for name in ("postgres", "redis", "model"):
        assert data["services"][name]["networks"] == ["backend"]


def test_secrets_come_from_files_and_the_entrypoint_reads_them() -> None:
    data = compose()
    text = COMPOSE.read_text()
    for secret in data["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    script = (DEPLOY / "make-secrets.sh").read_text()
    for secret in data["secrets"].values():
        assert f"new {secret['file'].removeprefix('./secrets/')} " in script
    # No secret value in the file itself.
    assert "PASSWORD:" not in text and "SECRET_KEY:" not in text.replace("_FILE:", "")
    entrypoint = (DEPLOY / "container-entrypoint.sh").read_text()
    for name in data["services"]["instance"]["environment"]:
        if name.endswith("_FILE") and "__" not in name:
            assert name.removesuffix("_FILE") in entrypoint

"""Settings: defaults are local and safe; env, aliases and the TOML file are honoured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from enclave.config import GatewaySettings, InstanceSettings, load_settings
from enclave.supervisor import make_plan


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ENCLAVE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_bind_to_loopback_on_gitlab_ports(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.instance.host == settings.gateway.host == settings.model.host == "127.0.0.1"
    assert (settings.instance.port, settings.gateway.port) == (8080, 5052)
    assert settings.data_dir == (tmp_path / "data").resolve()
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'data' / 'instance.db'}"
    assert settings.gateway.leeway_s == 30
    assert settings.model.threads >= 1


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCLAVE_GATEWAY__PORT", "6000")
    monkeypatch.setenv("ENCLAVE_INSTANCE__GATEWAY_TIMEOUT_S", "120")
    settings = load_settings()
    assert settings.gateway.port == 6000
    assert settings.instance.gateway_timeout_s == 120


def test_short_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCLAVE_DATABASE_URL", "postgresql://enclave@127.0.0.1/enclave")
    monkeypatch.setenv("ENCLAVE_ISSUER_URL", "http://instance.internal:8080")
    settings = load_settings()
    assert settings.database_url == "postgresql://enclave@127.0.0.1/enclave"
    assert settings.gateway.issuer_url == "http://instance.internal:8080"


def test_config_file_with_env_winning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "enclave.toml"
    config.write_text("[gateway]\nport = 7000\nleeway_s = 10\n[instance]\nport = 9000\n")
    monkeypatch.setenv("ENCLAVE_GATEWAY__PORT", "7001")
    settings = load_settings(config)
    assert settings.gateway.port == 7001
    assert settings.gateway.leeway_s == 10
    assert settings.instance.port == 9000


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ENCLAVE_GATEWAY__LEEWAY_S", "301"),
        ("ENCLAVE_INSTANCE__GATEWAY_TIMEOUT_S", "601"),
        ("ENCLAVE_GATEWAY__PORT", "70000"),
    ],
)
def test_out_of_range_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        load_settings()


def test_instance_and_gateway_share_the_egress_allow_list_default() -> None:
    assert InstanceSettings().model_egress_allow == GatewaySettings().model_egress_allow
    assert InstanceSettings().revocation_window_s > InstanceSettings().token_lifetime_s + 300
    with pytest.raises(ValidationError, match="model_egress_allow"):
        InstanceSettings(model_egress_allow=["http://10.0.0.1/"])


def test_enclave_up_hands_both_roles_the_same_egress_allow_list() -> None:
    allow = ["10.20.0.0/16", "vllm.internal:8000"]
    plan = make_plan(
        instance_host="127.0.0.1",
        instance_port=8080,
        gateway_host="127.0.0.1",
        gateway_port=5052,
        model_egress_allow=allow,
    )
    assert json.loads(plan.instance.env["ENCLAVE_INSTANCE__MODEL_EGRESS_ALLOW"]) == allow
    assert json.loads(plan.gateway.env["ENCLAVE_GATEWAY__MODEL_EGRESS_ALLOW"]) == allow

"""Shared helpers of the deployment-file tests: where things are, and which ENCLAVE_* names
are real settings."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from enclave.config import EnclaveSettings, GatewaySettings, InstanceSettings, ModelSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# Read by deploy/container-entrypoint.sh, which exports the setting named without _FILE.
ENTRYPOINT_FILE_VARIABLES = {"ENCLAVE_DATABASE_URL_FILE", "ENCLAVE_SECRET_KEY_FILE"}
# Stand-ins for values that come from Secrets, so that the settings can be parsed.
SECRET_STAND_INS = {
    "ENCLAVE_DATABASE_URL": "postgresql+psycopg://enclave@postgres:5432/enclave",
    "ENCLAVE_SECRET_KEY": base64.b64encode(bytes(32)).decode(),
}


def setting_names() -> set[str]:
    """Every ENCLAVE_* environment variable enclave.config reads."""
    sections = {"instance", "gateway", "model"}
    names = {f"ENCLAVE_{field.upper()}" for field in EnclaveSettings.model_fields} - {
        f"ENCLAVE_{section.upper()}" for section in sections
    }
    names.add("ENCLAVE_CONFIG")
    # The short aliases (config._ShortAliases) of the most used nested settings.
    names |= {"ENCLAVE_DATABASE_URL", "ENCLAVE_GATEWAY_URL", "ENCLAVE_ISSUER_URL"}
    for role, model in (
        ("INSTANCE", InstanceSettings),
        ("GATEWAY", GatewaySettings),
        ("MODEL", ModelSettings),
    ):
        names |= {f"ENCLAVE_{role}__{field.upper()}" for field in model.model_fields}
    return names


def unknown_settings(env: dict[str, str]) -> list[str]:
    known = setting_names() | ENTRYPOINT_FILE_VARIABLES
    return sorted(name for name in env if name.startswith("ENCLAVE_") and name not in known)


def parse_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> EnclaveSettings:
    """Load the settings a container with ``env`` would load (secrets replaced by stand-ins)."""
    for name in list(os.environ):
        if name.startswith("ENCLAVE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name in ENTRYPOINT_FILE_VARIABLES:
            name = name.removesuffix("_FILE")
            value = SECRET_STAND_INS[name]
        monkeypatch.setenv(name, value)
    return EnclaveSettings()


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]

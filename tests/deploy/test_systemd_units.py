"""deploy/systemd: `systemd-analyze verify` accepts the units (with ExecStart pointed at this
checkout's enclave), they are sandboxed, and their settings exist and parse."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, parse_settings, unknown_settings

UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
INSTALLED_ENCLAVE = "/opt/enclave/venv/bin/enclave"
SANDBOX = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "RestrictNamespaces=yes",
    "CapabilityBoundingSet=",
    "SystemCallFilter=@system-service",
)


def test_there_is_a_unit_per_role() -> None:
    assert [u.name for u in UNITS] == [
        "enclave-gateway.service",
        "enclave-instance.service",
        "enclave-model.service",
    ]


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_passes_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    enclave = Path(sys.executable).parent / "enclave"
    assert enclave.exists()
    text = unit.read_text()
    assert f"ExecStart={INSTALLED_ENCLAVE} " in text
    copy = tmp_path / unit.name
    copy.write_text(text.replace(INSTALLED_ENCLAVE, str(enclave)))
    returncode, problems = verify(analyze, copy)
    assert returncode == 0 and not problems, problems


def verify(analyze: str, unit: Path) -> tuple[int, list[str]]:
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    # systemd-analyze only warns (exit 0) about a directive it cannot parse: any line counts.
    # The only units it may not find are PostgreSQL's and Redis's, named in After=.
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and "postgresql.service" not in line and "redis-server" not in line
    ]
    return done.returncode, problems


def test_the_verify_check_catches_mistakes(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    unit = tmp_path / "broken.service"
    text = UNITS[0].read_text().replace(INSTALLED_ENCLAVE, str(Path(sys.executable)))
    unit.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=everything"))
    assert verify(analyze, unit)[1]


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_is_sandboxed(unit: Path) -> None:
    lines = unit.read_text().splitlines()
    for directive in SANDBOX:
        assert directive in lines, f"{unit.name}: {directive}"
    assert any(line.startswith("RestrictAddressFamilies=AF_INET AF_INET6") for line in lines)
    assert "User=enclave" in lines and "EnvironmentFile=/etc/enclave/enclave.env" in lines


def test_environment_file_settings_exist_and_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {}
    for line in (DEPLOY / "systemd" / "enclave.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, value = line.split("=", 1)
            (env[name],) = shlex.split(value)  # systemd unquotes values as a shell does
    assert not unknown_settings(env)
    settings = parse_settings(env, monkeypatch)
    # Loopback only: the TLS proxy on the host is the front door.
    assert settings.instance.host == settings.gateway.host == settings.model.host == "127.0.0.1"
    assert settings.gateway.issuer_url == settings.instance.issuer()
    assert settings.instance.embedded_model_endpoint == f"http://127.0.0.1:{settings.model.port}/v1"

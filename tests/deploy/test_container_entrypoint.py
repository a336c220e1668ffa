"""deploy/container-entrypoint.sh: the image's entrypoint turns ENCLAVE_DATABASE_URL_FILE and
ENCLAVE_SECRET_KEY_FILE into the settings, then runs the real `enclave` command."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

from tests.deploy.conftest import DEPLOY

ENTRYPOINT = DEPLOY / "container-entrypoint.sh"


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    base["PATH"] = f"{Path(sys.executable).parent}:{base.get('PATH', '')}"
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_secrets_from_files_reach_the_enclave_command(tmp_path: Path) -> None:
    database = tmp_path / "elsewhere" / "instance.db"
    database.parent.mkdir()
    url_file, key_file = tmp_path / "database-url", tmp_path / "secret-key"
    url_file.write_text(f"sqlite:///{database}\n")
    key = base64.b64encode(os.urandom(32)).decode()
    key_file.write_text(key + "\n")
    env = {
        "ENCLAVE_DATA_DIR": str(tmp_path / "data"),
        "ENCLAVE_DATABASE_URL_FILE": str(url_file),
        "ENCLAVE_SECRET_KEY_FILE": str(key_file),
    }
    done = run(env, "users", "list", "--json")
    assert done.returncode == 0, done.stderr
    assert '"root"' in done.stdout
    # The database is the one the file names, and the key came from the environment: no key
    # file was generated in the data dir.
    assert database.exists()
    assert not (tmp_path / "data" / "keys" / "secret.key").exists()
    backup = run(env, "backup", str(tmp_path / "b.backup"))
    assert backup.returncode == 0, backup.stderr
    assert "ENCLAVE_SECRET_KEY" in backup.stderr and key not in backup.stderr + backup.stdout


def test_an_unreadable_secret_file_stops_the_container(tmp_path: Path) -> None:
    done = run({"ENCLAVE_SECRET_KEY_FILE": str(tmp_path / "missing")}, "version")
    assert done.returncode == 1
    assert "ENCLAVE_SECRET_KEY_FILE names" in done.stderr and "cannot be read" in done.stderr


def test_enclave_settings_ending_in_file_are_left_alone(tmp_path: Path) -> None:
    # A real setting of Enclave's own; the entrypoint must not read it as a secret file.
    env = {"ENCLAVE_GATEWAY__SELF_SIGNING_KEY_FILE": str(tmp_path / "not-read.pem")}
    done = run(env, "version")
    assert done.returncode == 0, done.stderr

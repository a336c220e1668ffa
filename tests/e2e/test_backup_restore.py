"""``enclave backup`` / ``enclave restore``: a round trip through real processes.

A running stack gets a user, a personal access token and a model with an API key; a backup is
taken while it runs; then the data is restored into a new data dir (and, on PostgreSQL, a new
database), a new stack starts on it, and the token made before the backup completes code while
one made after the backup is refused. Runs on SQLite and on PostgreSQL (a throwaway cluster from
the Debian packages, as the instance tests use).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import running_stack, stack_env
from tests.unit.instance.pg import PostgresServer, postgres_server, postgres_wanted

pytestmark = pytest.mark.e2e

BODY = {
    "current_file": {
        "file_name": "calc.py",
        "content_above_cursor": "def add(a, b):\n    ",
        "content_below_cursor": "\n",
    },
    "intent": "completion",
    "stream": False,
}
MODEL_KEY = "enclkey-backup-test-model-key-0123456789"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    wanted, reason = postgres_wanted()
    if not wanted:
        pytest.skip(reason)
    with postgres_server() as server:
        yield server


def enclave(env: dict[str, str], *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "enclave", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == expect, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def new_token(env: dict[str, str], user: str) -> str:
    done = enclave(env, "tokens", "create", user, "--name", "ide", "--scope", "api", "--json")
    return str(json.loads(done.stdout)["token"])


def complete(instance_url: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{instance_url}/api/v4/code_suggestions/completions",
        json=BODY,
        headers={"PRIVATE-TOKEN": token},
        timeout=120,
    )


def say(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """One summary line in pytest's output, also without -s (as `make test` runs)."""
    with capsys.disabled():
        print(f"\n{line}")


def round_trip(tmp_path: Path, tiny_gguf: Path, expected_answer: str, **db: str) -> str:
    source_dir, target_dir = tmp_path / "source", tmp_path / "target"
    archive = tmp_path / "instance.backup"
    key_file = tmp_path / "model-key.txt"
    key_file.write_text(MODEL_KEY)
    source_db = {"ENCLAVE_DATABASE_URL": db["source"]} if "source" in db else {}
    target_db = {"ENCLAVE_DATABASE_URL": db["target"]} if "target" in db else {}

    with running_stack(source_dir, tiny_gguf, **source_db) as stack:
        env = stack.env
        enclave(env, "users", "add", "alice", "--email", "alice@example.com")
        kept = new_token(env, "alice")
        enclave(
            env,
            "models",
            "add",
            "--name",
            "keyed",
            "--family",
            "general",
            "--endpoint",
            stack.model_url,
            "--identifier",
            "custom_openai/smollm2",
            "--api-key-file",
            str(key_file),
        )
        assert complete(stack.instance_url, kept).status_code == 200

        # Online: the instance keeps serving while the backup is taken.
        started = time.monotonic()
        done = enclave(env, "backup", str(archive))
        took = time.monotonic() - started
        assert "Database:" in done.stderr and "Wrote" in done.stderr
        assert archive.stat().st_mode & 0o777 == 0o600
        with tarfile.open(archive) as tar:
            names = tar.getnames()
        assert "files/keys/secret.key" in names
        assert any(n.startswith("files/keys/signing/") and n.endswith(".pem") for n in names)
        for text in (done.stdout, done.stderr):  # no secret in the output
            assert MODEL_KEY not in text and kept not in text

        lost = new_token(env, "alice")  # after the backup: the restore must forget it
        assert complete(stack.instance_url, lost).status_code == 200

        # Never over a running instance's data without --force.
        port = stack.instance_url.rsplit(":", 1)[1]
        refused = enclave(
            {**env, "ENCLAVE_INSTANCE__PORT": port}, "restore", str(archive), expect=1
        )
        assert "an instance answers" in refused.stderr and "--force" in refused.stderr
        # A second backup never overwrites the first.
        assert "exists" in enclave(env, "backup", str(archive), expect=1).stderr

    target_env = {**stack_env(target_dir), **target_db}
    # A secret key that cannot decrypt the model keys is refused before anything is written.
    other_key = base64.b64encode(os.urandom(32)).decode()
    wrong = enclave(
        {**target_env, "ENCLAVE_SECRET_KEY": other_key}, "restore", str(archive), expect=1
    )
    assert "is not the secret key of the backup" in wrong.stderr
    assert other_key not in wrong.stderr
    done = enclave(target_env, "restore", str(archive))
    # The embedded model's key and "keyed"'s, both decrypted with the restored secret key.
    assert "2 model API key(s) checked" in done.stdout
    assert "Restoring" in done.stderr and "Checked:" in done.stderr
    # Restoring again over the restored (stopped) instance needs --force.
    assert "--force" in enclave(target_env, "restore", str(archive), expect=1).stderr

    with running_stack(target_dir, tiny_gguf, **target_db) as restored:
        response = complete(restored.instance_url, kept)
        assert response.status_code == 200, response.text
        assert [c["text"] for c in response.json()["choices"]] == [expected_answer]
        assert complete(restored.instance_url, lost).status_code == 401
        models = json.loads(enclave(restored.env, "models", "list", "--json").stdout)
        assert "keyed" in {m["name"] for m in models}
    return (
        f"backup round trip ({db.get('kind', 'sqlite')}): online backup in {took:.1f} s, "
        f"{archive.stat().st_size} bytes; restore refused over a running instance and with a "
        "wrong secret key; the restored PAT served a completion, a later one was refused"
    )


def test_backup_and_restore_on_sqlite(
    tmp_path: Path, tiny_gguf: Path, expected_answer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    say(capsys, round_trip(tmp_path, tiny_gguf, expected_answer))


def test_backup_and_restore_on_postgresql(
    tmp_path: Path,
    tiny_gguf: Path,
    expected_answer: str,
    postgres: PostgresServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    summary = round_trip(
        tmp_path,
        tiny_gguf,
        expected_answer,
        source=postgres.create_database(),
        target=postgres.create_database(),
        kind="postgresql",
    )
    say(capsys, summary)


def test_restore_refuses_what_is_not_a_backup(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "data")
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a backup")
    assert "not a readable Enclave backup" in enclave(env, "restore", str(bogus), expect=1).stderr
    missing = enclave(env, "restore", str(tmp_path / "nope"), expect=1)
    assert "does not exist" in missing.stderr

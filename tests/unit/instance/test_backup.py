"""enclave.instance.backup without processes: what a restore refuses, and why, on both engines.

The round trip through real processes (a completion served with a restored PAT) is
tests/e2e/test_backup_restore.py.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from pydantic import SecretStr

from enclave.config import EnclaveSettings
from enclave.instance.backup import BackupError, backup, restore
from enclave.instance.bootstrap import initialise
from tests.unit.instance.conftest import Backend, make_settings

pytestmark = pytest.mark.usefixtures("db_backend")


def quiet(message: str) -> None:
    pass


def made_backup(settings: EnclaveSettings, tmp_path: Path) -> Path:
    initialise(settings)
    archive = tmp_path / "instance.backup"
    backup(settings, archive, progress=quiet)
    return archive


def fresh(tmp_path: Path, name: str = "target", **overrides: object) -> EnclaveSettings:
    settings = make_settings(tmp_path / name)
    return settings.model_copy(update=overrides) if overrides else settings


def rewrite(
    archive: Path, change: dict[str, bytes | None], manifest_edit: dict[str, object]
) -> None:
    """Rewrite ``archive`` with some members replaced (None: removed) and the manifest edited."""
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    manifest = json.loads(members["manifest.json"])
    manifest.update(manifest_edit)
    members["manifest.json"] = json.dumps(manifest).encode()
    for name, data in change.items():
        if data is None:
            members.pop(name, None)
        else:
            members[name] = data
    archive.unlink()
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_backup_holds_the_database_and_the_keys(settings: EnclaveSettings, tmp_path: Path) -> None:
    archive = made_backup(settings, tmp_path)
    assert archive.stat().st_mode & 0o777 == 0o600
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert "files/keys/secret.key" in names and "files/admin-token.txt" in names
    assert manifest["secret_key_in_backup"] is True
    assert set(manifest["sha256"]) == names - {"manifest.json"}
    with pytest.raises(BackupError, match="exists"):
        backup(settings, archive, progress=quiet)


def test_round_trip_into_an_empty_data_dir(settings: EnclaveSettings, tmp_path: Path) -> None:
    archive = made_backup(settings, tmp_path)
    target = fresh(tmp_path)
    result = restore(target, archive, force=False, progress=quiet)
    assert result.users == 1 and result.files >= 3
    assert (target.keys_dir / "secret.key").read_bytes() == settings.secret_key_file.read_bytes()
    assert (target.keys_dir / "secret.key").stat().st_mode & 0o777 == 0o600
    # The restored instance is not empty any more: a second restore needs --force.
    with pytest.raises(BackupError, match="--force"):
        restore(target, archive, force=False, progress=quiet)
    assert restore(target, archive, force=True, progress=quiet).users == 1


def test_a_damaged_backup_is_refused_before_anything_is_written(
    settings: EnclaveSettings, tmp_path: Path
) -> None:
    archive = made_backup(settings, tmp_path)
    rewrite(archive, {"files/admin-token.txt": b"tampered\n"}, {})
    target = fresh(tmp_path)
    with pytest.raises(BackupError, match="damaged"):
        restore(target, archive, force=False, progress=quiet)
    assert not target.keys_dir.exists()


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "files/../../x"])
def test_member_names_outside_the_backup_are_refused(
    settings: EnclaveSettings, tmp_path: Path, name: str
) -> None:
    archive = made_backup(settings, tmp_path)
    with tarfile.open(archive) as tar:
        checksums = json.loads(tar.extractfile("manifest.json").read())["sha256"]  # type: ignore[union-attr]
    rewrite(archive, {}, {"sha256": {**checksums, name: "0" * 64}})
    with pytest.raises(BackupError, match="refusing the member name"):
        restore(fresh(tmp_path), archive, force=False, progress=quiet)


def test_missing_member_and_wrong_format(settings: EnclaveSettings, tmp_path: Path) -> None:
    archive = made_backup(settings, tmp_path)
    rewrite(archive, {"files/admin-token.txt": None}, {})
    with pytest.raises(BackupError, match=r"incomplete: files/admin-token\.txt"):
        restore(fresh(tmp_path), archive, force=False, progress=quiet)
    rewrite(archive, {}, {"format_version": 99})
    with pytest.raises(BackupError, match="format 99"):
        restore(fresh(tmp_path, "other"), archive, force=False, progress=quiet)


def test_a_backup_from_a_newer_schema_is_refused(settings: EnclaveSettings, tmp_path: Path) -> None:
    archive = made_backup(settings, tmp_path)
    rewrite(archive, {}, {"schema_revision": "9999_from_the_future", "enclave_version": "9.0"})
    target = fresh(tmp_path)
    with pytest.raises(BackupError, match=r"newer than this Enclave knows .* \(9\.0\) or newer"):
        restore(target, archive, force=False, progress=quiet)
    assert not target.keys_dir.exists()


def test_secret_key_from_the_environment_must_be_given_back(
    settings: EnclaveSettings, tmp_path: Path
) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    with_env = settings.model_copy(update={"secret_key": SecretStr(key)})
    archive = made_backup(with_env, tmp_path)
    with tarfile.open(archive) as tar:
        assert "files/keys/secret.key" not in tar.getnames()
        assert key.encode() not in archive.read_bytes()
    with pytest.raises(BackupError, match="set ENCLAVE_SECRET_KEY to that key"):
        restore(fresh(tmp_path), archive, force=False, progress=quiet)
    other = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(BackupError, match="not the secret key of the backup") as refused:
        restore(fresh(tmp_path, secret_key=SecretStr(other)), archive, force=False, progress=quiet)
    assert other not in str(refused.value)
    result = restore(
        fresh(tmp_path, secret_key=SecretStr(key)), archive, force=False, progress=quiet
    )
    assert result.users == 1


def test_engines_do_not_mix(db_backend: Backend, settings: EnclaveSettings, tmp_path: Path) -> None:
    archive = made_backup(settings, tmp_path)
    other_url = (
        f"sqlite:///{tmp_path / 'other.db'}"
        if db_backend.name == "postgresql"
        else "postgresql+psycopg://enclave@127.0.0.1:1/enclave"
    )
    target = EnclaveSettings(data_dir=tmp_path / "target", instance={"database_url": other_url})
    with pytest.raises(BackupError, match="moving between engines is not supported"):
        restore(target, archive, force=False, progress=quiet)

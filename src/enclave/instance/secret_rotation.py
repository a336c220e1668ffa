"""Rotating the secret key that encrypts model API keys (``enclave secret-key rotate``).

Key file mode (the default: ``<data_dir>/keys/secret.key``), crash-safe at every step:

1. the new key is written to ``secret.key.next`` (every instance can already decrypt with it:
   the keyring loads that file too);
2. every stored API key is decrypted with the old key and encrypted with the new one, in one
   database transaction, with an audit event ``secret_key_rotated``;
3. the old key is appended to ``secret.key.previous`` and ``secret.key.next`` replaces
   ``secret.key``.

Running instances that share the data dir notice values encrypted with a key they do not know
and re-read the key files (:class:`~enclave.instance.secrets.SecretBox`), so no restart is
needed. ``secret.key.previous`` can be deleted once every instance runs with the new key.

Environment mode (``ENCLAVE_SECRET_KEY`` is set): the command cannot change the environment, so
it takes the new key from a file (``--new-key-file``), re-encrypts, and tells the operator to
set ``ENCLAVE_SECRET_KEY`` to it and restart every instance.
"""

from __future__ import annotations

import base64
import contextlib
import os
from dataclasses import dataclass

from sqlalchemy import select

from enclave.config import EnclaveSettings
from enclave.instance import audit
from enclave.instance.actor import Actor
from enclave.instance.db.engine import SQLITE_BEGIN_OPTION, make_engine, make_session_factory
from enclave.instance.db.models import SelfHostedModel
from enclave.instance.features import API_TOKEN_PURPOSE
from enclave.instance.files import read_private_file, write_private_file
from enclave.instance.secrets import (
    KEY_BYTES,
    SecretBox,
    SecretDecryptError,
    SecretKeyError,
    load_secret_box,
    next_key_file,
    previous_key_file,
)


class RotationError(RuntimeError):
    """The rotation was refused or failed; nothing was changed. The message says why."""


@dataclass(frozen=True)
class RotationResult:
    re_encrypted: int
    old_key_id: str
    new_key_id: str
    environment_mode: bool


def _encode(key: bytes) -> bytes:
    return base64.b64encode(key) + b"\n"


def rotate_secret_key(
    settings: EnclaveSettings, actor: Actor, new_key: bytes | None = None
) -> RotationResult:
    environment_mode = settings.secret_key is not None
    if environment_mode and new_key is None:
        raise RotationError(
            "ENCLAVE_SECRET_KEY is set, so the new key must come from you: write a new key to "
            'a file (python -c "import base64, os; print(base64.b64encode(os.urandom(32))'
            '.decode())" > new.key) and pass --new-key-file new.key'
        )
    old_box = load_secret_box(settings)
    key = new_key if new_key is not None else os.urandom(KEY_BYTES)
    if len(key) != KEY_BYTES:
        raise RotationError(f"the new key must be {KEY_BYTES} bytes, got {len(key)}")
    new_box = SecretBox(key)
    if new_box.key_id == old_box.key_id:
        raise RotationError("the new key is the current key; give a different one")
    pending = next_key_file(settings)
    if not environment_mode:
        write_private_file(pending, _encode(key), exclusive=False)
    engine = make_engine(settings.database_url)
    try:
        sessions = make_session_factory(engine)
        with sessions() as session, session.begin():
            session.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            models = session.scalars(
                select(SelfHostedModel).where(SelfHostedModel.api_token_encrypted.is_not(None))
            ).all()
            unreadable: list[str] = []
            for model in models:
                assert model.api_token_encrypted is not None
                try:
                    plaintext = old_box.decrypt(model.api_token_encrypted, API_TOKEN_PURPOSE)
                except SecretDecryptError:
                    unreadable.append(model.name)
                    continue
                model.api_token_encrypted = new_box.encrypt(plaintext, API_TOKEN_PURPOSE)
            if unreadable:
                raise RotationError(
                    "the API keys of these models cannot be decrypted with the current secret "
                    f"key: {', '.join(sorted(unreadable))}. Re-enter their keys (enclave models "
                    "update NAME --api-key-file ...) or restore the key they were stored with, "
                    "then rotate again. Nothing was changed"
                )
            audit.record(
                session,
                audit.SECRET_KEY_ROTATED,
                "secret_key",
                {
                    "re_encrypted": len(models),
                    "old_key_id": old_box.key_id.hex(),
                    "new_key_id": new_box.key_id.hex(),
                    "mode": "environment" if environment_mode else "key file",
                },
                actor=actor,
            )
    except BaseException:
        if not environment_mode:
            with contextlib.suppress(FileNotFoundError):
                pending.unlink()
        raise
    finally:
        engine.dispose()
    if not environment_mode:
        previous = previous_key_file(settings)
        kept = read_private_file(previous) if previous.exists() else b""
        current = read_private_file(settings.secret_key_file)
        write_private_file(previous, kept + current.strip() + b"\n", exclusive=False)
        os.replace(pending, settings.secret_key_file)
    return RotationResult(len(models), old_box.key_id.hex(), new_box.key_id.hex(), environment_mode)


def read_new_key_file(path: str) -> bytes:
    from enclave.instance.secrets import parse_secret_key

    try:
        text = open(path, encoding="utf-8").read()  # noqa: SIM115 - tiny file
    except OSError as exc:
        raise RotationError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return parse_secret_key(text)
    except SecretKeyError as exc:
        raise RotationError(f"{path}: {exc}") from exc

"""Start-up initialisation, run at every start and idempotent.

1. migrate the database to the newest schema;
2. load or create the secret key (model API keys at rest) and the signing key (tokens);
3. create the instance id on the first start;
4. create the admin user ``root`` with a personal access token on the first start. The token's
   plaintext is written once, to ``admin-token.txt`` (0600) in the data dir, and returned once
   in :class:`BootstrapResult` for the CLI to show; it is never logged and never stored;
5. when an embedded model endpoint is configured, register it as the self-hosted model
   ``embedded-smollm2`` and assign it to every feature that has no model yet and accepts the
   embedded model's family.

Steps run under a file lock in the data dir, so several workers starting together do each step
once; database writes also take SQLite's write lock up front (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from enclave.common.logging import get_logger
from enclave.config import EnclaveSettings
from enclave.instance import audit
from enclave.instance.db.engine import SQLITE_BEGIN_OPTION, make_engine, make_session_factory
from enclave.instance.db.migrate import upgrade
from enclave.instance.db.models import (
    FeatureProvider,
    FeatureSetting,
    InstanceSetting,
    ModelProvider,
    SelfHostedModel,
    User,
)
from enclave.instance.features import (
    API_TOKEN_PURPOSE,
    COMPATIBLE_FAMILIES,
    Feature,
    main_feature,
)
from enclave.instance.files import ensure_private_dir, read_private_file, write_private_file
from enclave.instance.keys import KeyStore
from enclave.instance.passwords import hash_password
from enclave.instance.pats import SCOPE_AI_FEATURES, SCOPE_API, create_token
from enclave.instance.secrets import SecretBox, SecretDecryptError, load_secret_box

log = get_logger(__name__)

ADMIN_USERNAME = "root"
ADMIN_NAME = "Administrator"
ADMIN_EMAIL = "admin@example.com"  # GitLab's default for root; change it in the admin API
ADMIN_TOKEN_NAME = "bootstrap admin token"  # noqa: S105 - a label
ADMIN_TOKEN_SCOPES = (SCOPE_API, SCOPE_AI_FEATURES)

EMBEDDED_MODEL_NAME = "embedded-smollm2"
# Every feature with a setting of its own (chat sub-features follow duo_chat), so that a fresh
# install answers every feature with the embedded model; those whose compatibility matrix does
# not allow the embedded model's family are left unassigned.
EMBEDDED_MODEL_FEATURES = tuple(feature for feature in Feature if main_feature(feature) is None)

LOCK_FILE = ".instance-init.lock"


@dataclass(frozen=True)
class BootstrapResult:
    """What start-up established; the app builds its runtime context from it."""

    instance_id: uuid.UUID
    user_id_salt: bytes = field(repr=False)
    keys: KeyStore = field(repr=False)
    secret_box: SecretBox = field(repr=False)
    admin_user_id: int
    admin_created: bool
    admin_token_file: Path
    # The admin token's plaintext, only on the start that created it (for the CLI to show
    # once); SecretStr keeps it out of reprs and logs.
    admin_token: SecretStr | None
    signing_key_created: bool
    embedded_model_id: int | None


@contextmanager
def _init_lock(data_dir: Path) -> Iterator[None]:
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def _write_session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction that holds the write lock from its first statement (SQLite)."""
    with sessions() as session, session.begin():
        session.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        yield session


def initialise(settings: EnclaveSettings) -> BootstrapResult:
    """Make the instance ready to serve; safe to run at every start."""
    ensure_private_dir(settings.data_dir)
    with _init_lock(settings.data_dir):
        upgrade(settings.database_url)
        secret_box = load_secret_box(settings)
        keys, key_created = KeyStore.load_or_create(settings.keys_dir)
        engine = make_engine(settings.database_url)
        try:
            sessions = make_session_factory(engine)
            instance = _ensure_instance(sessions)
            admin_id, admin_token = _ensure_admin(sessions, settings)
            model_id = (
                _ensure_embedded_model(sessions, settings, secret_box)
                if settings.instance.embedded_model_endpoint
                else None
            )
        finally:
            engine.dispose()
    log.info(
        "instance_initialised",
        instance_id=str(instance.instance_id),
        issuer=settings.instance.issuer(),
        signing_kid=keys.active.kid,
        admin_created=admin_token is not None,
        data_dir=str(settings.data_dir),
        embedded_model_id=model_id,
    )
    return BootstrapResult(
        instance_id=instance.instance_id,
        user_id_salt=instance.user_id_salt,
        keys=keys,
        secret_box=secret_box,
        admin_user_id=admin_id,
        admin_created=admin_token is not None,
        admin_token_file=settings.admin_token_file,
        admin_token=SecretStr(admin_token) if admin_token is not None else None,
        signing_key_created=key_created,
        embedded_model_id=model_id,
    )


def _ensure_instance(sessions: sessionmaker[Session]) -> InstanceSetting:
    with _write_session(sessions) as session:
        row = session.get(InstanceSetting, 1)
        if row is None:
            row = InstanceSetting(id=1, instance_id=uuid.uuid4(), user_id_salt=os.urandom(32))
            session.add(row)
            log.info("instance_id_created", instance_id=str(row.instance_id))
        return row


def _ensure_admin(
    sessions: sessionmaker[Session], settings: EnclaveSettings
) -> tuple[int, str | None]:
    """The admin's id, and the new token's plaintext if the admin was created now."""
    with _write_session(sessions) as session:
        admin = session.scalar(select(User).where(User.username == ADMIN_USERNAME))
        if admin is not None:
            return admin.id, None
        # The web UI's first sign-in; written once beside the token (0600), like it.
        password = secrets.token_urlsafe(18)
        admin = User(
            username=ADMIN_USERNAME,
            name=ADMIN_NAME,
            email=ADMIN_EMAIL,
            is_admin=True,
            blocked=False,
            password_hash=hash_password(password),
        )
        session.add(admin)
        session.flush()
        created = create_token(session, admin, name=ADMIN_TOKEN_NAME, scopes=ADMIN_TOKEN_SCOPES)
        audit.record(
            session,
            audit.USER_CREATED,
            f"user/{admin.id}",
            {"username": admin.username, "is_admin": True, "by": "bootstrap"},
        )
        audit.record(
            session,
            audit.PERSONAL_ACCESS_TOKEN_CREATED,
            f"personal_access_token/{created.id}",
            {"user": admin.username, "name": created.name, "scopes": list(created.scopes)},
        )
        path = settings.admin_token_file
        if path.exists():
            # Left by an earlier install whose database is gone: that token is dead anyway.
            log.warning("admin_token_file_replaced", path=str(path))
        # Written before the commit: if writing fails the admin is not created and the next
        # start tries again, instead of an admin whose only token was lost.
        write_private_file(path, f"{created.plaintext}\n".encode(), exclusive=False)
        write_private_file(settings.admin_password_file, f"{password}\n".encode(), exclusive=False)
        # "path", not "admin_token_file": the log filter blanks any key that mentions a token.
        log.info("admin_created", username=admin.username, path=str(path))
        return admin.id, created.plaintext


def _read_model_api_key(path: Path) -> str | None:
    if not path.exists():
        log.warning("embedded_model_api_key_missing", path=str(path))
        return None
    return read_private_file(path).decode().strip() or None


def _ensure_embedded_model(
    sessions: sessionmaker[Session], settings: EnclaveSettings, secret_box: SecretBox
) -> int:
    endpoint = settings.instance.embedded_model_endpoint
    assert endpoint is not None
    api_key = _read_model_api_key(settings.model_api_key_file)
    with _write_session(sessions) as session:
        model = session.scalar(
            select(SelfHostedModel).where(SelfHostedModel.name == EMBEDDED_MODEL_NAME)
        )
        if model is None:
            model = SelfHostedModel(
                name=EMBEDDED_MODEL_NAME,
                family=settings.instance.default_model_family,
                provider=ModelProvider.API.value,
                endpoint=endpoint,
                identifier=settings.instance.default_model_identifier,
                api_token_encrypted=(
                    secret_box.encrypt(api_key, API_TOKEN_PURPOSE) if api_key else None
                ),
            )
            session.add(model)
            session.flush()
            audit.record(
                session,
                audit.SELF_HOSTED_MODEL_CREATED,
                f"ai_self_hosted_model/{model.id}",
                {
                    "name": model.name,
                    "family": model.family,
                    "endpoint": model.endpoint,
                    "identifier": model.identifier,
                    "has_api_token": api_key is not None,
                },
            )
        else:
            _update_embedded_model(session, model, settings, api_key, secret_box)
        for feature in EMBEDDED_MODEL_FEATURES:
            if model.family in COMPATIBLE_FAMILIES[feature]:
                _assign_if_unassigned(session, feature, model)
        return model.id


def _update_embedded_model(
    session: Session,
    model: SelfHostedModel,
    settings: EnclaveSettings,
    api_key: str | None,
    secret_box: SecretBox,
) -> None:
    """Follow the embedded model's current endpoint (its port is picked at each start) and key."""
    changed: list[str] = []
    wanted = {
        "family": settings.instance.default_model_family,
        "provider": ModelProvider.API.value,
        "endpoint": settings.instance.embedded_model_endpoint,
        "identifier": settings.instance.default_model_identifier,
    }
    for attribute, value in wanted.items():
        if getattr(model, attribute) != value:
            setattr(model, attribute, value)
            changed.append(attribute)
    current_key: str | None = None
    if model.api_token_encrypted is not None:
        try:
            current_key = secret_box.decrypt(model.api_token_encrypted, API_TOKEN_PURPOSE)
        except SecretDecryptError:
            current_key = None  # unreadable (secret key changed): replace it with the file's
    if api_key is not None and current_key != api_key:
        model.api_token_encrypted = secret_box.encrypt(api_key, API_TOKEN_PURPOSE)
        changed.append("api_token")
    if changed:
        audit.record(
            session,
            audit.SELF_HOSTED_MODEL_UPDATED,
            f"ai_self_hosted_model/{model.id}",
            {"name": model.name, "changed": changed, "endpoint": model.endpoint},
        )
        log.info("embedded_model_updated", model=model.name, changed=changed)


def _assign_if_unassigned(session: Session, feature: Feature, model: SelfHostedModel) -> None:
    setting = session.scalar(select(FeatureSetting).where(FeatureSetting.feature == feature.value))
    if setting is None:
        setting = FeatureSetting(feature=feature.value)
        session.add(setting)
    elif setting.provider != FeatureProvider.UNASSIGNED:
        return  # an administrator chose something: keep it
    setting.provider = FeatureProvider.SELF_HOSTED.value
    setting.self_hosted_model_id = model.id
    audit.record(
        session,
        audit.SELF_HOSTED_MODEL_FEATURE_CHANGED,
        f"ai_feature_setting/{feature.value}",
        {"feature": feature.value, "provider": setting.provider, "model": model.name},
    )

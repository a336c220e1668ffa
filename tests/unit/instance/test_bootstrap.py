"""Start-up initialisation: first start, every later start, the embedded model, secrecy."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest
import structlog
from sqlalchemy import func, select

from enclave.config import EnclaveSettings
from enclave.instance.bootstrap import BootstrapResult, initialise
from enclave.instance.db import (
    AuditEvent,
    FeatureSetting,
    InstanceSetting,
    PersonalAccessToken,
    SelfHostedModel,
    User,
    make_engine,
    make_session_factory,
)
from enclave.instance.features import API_TOKEN_PURPOSE, Feature, resolve_feature
from enclave.instance.pats import AI_SCOPES, authenticate
from tests.unit.instance.conftest import (
    EMBEDDED_ENDPOINT,
    MODEL_API_KEY,
    make_settings,
    write_model_api_key,
)

pytestmark = pytest.mark.usefixtures("db_backend")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def count(settings: EnclaveSettings, model: type) -> int:
    engine = make_engine(settings.database_url)
    with engine.connect() as connection:
        value = connection.execute(select(func.count()).select_from(model)).scalar_one()
    engine.dispose()
    return int(value)


def test_first_start_creates_everything(settings: EnclaveSettings) -> None:
    result = initialise(settings)
    assert result.admin_created and result.signing_key_created
    assert result.admin_token is not None
    token = result.admin_token.get_secret_value()
    assert token not in repr(result)
    # The token file: the plaintext, once, private.
    assert settings.admin_token_file.read_text() == token + "\n"
    assert mode(settings.admin_token_file) == 0o600
    assert mode(settings.data_dir) == 0o700
    assert mode(settings.keys_dir) == 0o700
    assert mode(settings.secret_key_file) == 0o600
    if settings.database_url.startswith("sqlite"):
        assert mode(Path(settings.database_url.removeprefix("sqlite:///"))) == 0o600
    # The token works, as the admin, with the scopes the AI endpoints accept.
    sessions = make_session_factory(make_engine(settings.database_url))
    with sessions() as session:
        principal = authenticate(session, token, accepted_scopes=AI_SCOPES)
        assert (principal.username, principal.is_admin) == ("root", True)
        assert sorted(principal.scopes) == ["ai_features", "api"]
        row = session.get(InstanceSetting, 1)
        assert row is not None and row.instance_id == result.instance_id


def test_second_start_changes_nothing(settings: EnclaveSettings) -> None:
    first = initialise(settings)
    before = settings.admin_token_file.stat()
    content = settings.admin_token_file.read_text()
    second = initialise(settings)
    assert second.instance_id == first.instance_id
    assert second.keys.active.kid == first.keys.active.kid
    assert second.user_id_salt == first.user_id_salt
    assert not second.admin_created and second.admin_token is None
    assert not second.signing_key_created
    assert second.admin_user_id == first.admin_user_id
    after = settings.admin_token_file.stat()
    assert settings.admin_token_file.read_text() == content
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert count(settings, User) == 1
    assert count(settings, PersonalAccessToken) == 1


def test_concurrent_starts_make_one_of_everything(settings: EnclaveSettings) -> None:
    results: list[BootstrapResult] = []
    threads = [
        threading.Thread(target=lambda: results.append(initialise(settings))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 3
    assert len({r.instance_id for r in results}) == 1
    assert len({r.keys.active.kid for r in results}) == 1
    assert sum(r.admin_created for r in results) == 1
    assert count(settings, User) == 1


def test_the_admin_token_is_never_logged(settings: EnclaveSettings) -> None:
    write_model_api_key(settings.data_dir)
    configured = make_settings(settings.data_dir, embedded_model_endpoint=EMBEDDED_ENDPOINT)
    with structlog.testing.capture_logs() as logs:
        result = initialise(configured)
    assert result.admin_token is not None
    text = repr(logs)
    assert "admin_created" in text  # the logs were captured
    assert result.admin_token.get_secret_value() not in text
    assert MODEL_API_KEY not in text


def test_a_stale_token_file_is_replaced_when_the_database_is_new(
    settings: EnclaveSettings,
) -> None:
    settings.data_dir.mkdir(parents=True)
    settings.admin_token_file.write_text("enclpat-left-over-from-an-old-install\n")
    result = initialise(settings)
    assert result.admin_token is not None
    assert settings.admin_token_file.read_text().strip() == result.admin_token.get_secret_value()
    assert mode(settings.admin_token_file) == 0o600


def test_without_embedded_model_no_feature_is_assigned(settings: EnclaveSettings) -> None:
    result = initialise(settings)
    assert result.embedded_model_id is None
    assert count(settings, SelfHostedModel) == 0
    assert count(settings, FeatureSetting) == 0


def test_embedded_model_is_registered_with_an_encrypted_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_model_api_key(data_dir)
    settings = make_settings(data_dir, embedded_model_endpoint=EMBEDDED_ENDPOINT)
    result = initialise(settings)
    sessions = make_session_factory(make_engine(settings.database_url))
    with sessions() as session:
        model = session.scalars(select(SelfHostedModel)).one()
        assert model.id == result.embedded_model_id
        assert (model.name, model.family, model.provider) == ("embedded-smollm2", "general", "api")
        assert (model.endpoint, model.identifier) == (EMBEDDED_ENDPOINT, "custom_openai/smollm2")
        assert model.api_token_encrypted is not None
        assert MODEL_API_KEY.encode() not in model.api_token_encrypted
        assert result.secret_box.decrypt(model.api_token_encrypted, API_TOKEN_PURPOSE) == (
            MODEL_API_KEY
        )
        settings_rows = {row.feature: row for row in session.scalars(select(FeatureSetting))}
        # Every feature with a setting of its own; chat sub-features follow duo_chat's.
        assert set(settings_rows) == {
            feature.value for feature in Feature if not feature.value.startswith("duo_chat_")
        }
        assert len(settings_rows) == 10
        for row in settings_rows.values():
            assert (row.provider, row.self_hosted_model_id) == ("self_hosted", model.id)
        resolved = resolve_feature(session, result.secret_box, Feature.CODE_COMPLETIONS)
        assert resolved.api_key == MODEL_API_KEY
        actions = sorted(session.scalars(select(AuditEvent.action)))
        assert actions.count("self_hosted_model_feature_changed") == 10
        assert "self_hosted_model_created" in actions
        for event in session.scalars(select(AuditEvent)):
            assert MODEL_API_KEY not in repr(event.details)
    # The raw database file holds no plaintext key (nor the admin token).
    assert result.admin_token is not None
    for path in data_dir.glob("instance.db*"):
        raw = path.read_bytes()
        assert MODEL_API_KEY.encode() not in raw
        assert result.admin_token.get_secret_value().encode() not in raw


def test_embedded_model_follows_a_new_endpoint_and_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_model_api_key(data_dir)
    initialise(make_settings(data_dir, embedded_model_endpoint=EMBEDDED_ENDPOINT))
    write_model_api_key(data_dir, "enclkey-rotated-model-key-000000")
    new_endpoint = "http://127.0.0.1:2/v1"
    result = initialise(make_settings(data_dir, embedded_model_endpoint=new_endpoint))
    sessions = make_session_factory(make_engine(make_settings(data_dir).database_url))
    with sessions() as session:
        resolved = resolve_feature(session, result.secret_box, Feature.CODE_GENERATIONS)
        assert resolved.endpoint == new_endpoint
        assert resolved.api_key == "enclkey-rotated-model-key-000000"
        update = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "self_hosted_model_updated")
        ).one()
        assert update.details["changed"] == ["endpoint", "api_token"]
        assert "enclkey-rotated" not in repr(update.details)
    assert count(make_settings(data_dir), SelfHostedModel) == 1


def test_admin_choices_survive_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_model_api_key(data_dir)
    settings = make_settings(data_dir, embedded_model_endpoint=EMBEDDED_ENDPOINT)
    initialise(settings)
    sessions = make_session_factory(make_engine(settings.database_url))
    with sessions() as session, session.begin():
        row = session.scalars(
            select(FeatureSetting).where(FeatureSetting.feature == "duo_chat")
        ).one()
        row.provider, row.self_hosted_model_id = "disabled", None
    initialise(settings)
    with sessions() as session:
        row = session.scalars(
            select(FeatureSetting).where(FeatureSetting.feature == "duo_chat")
        ).one()
        assert row.provider == "disabled"


def test_missing_model_key_registers_the_model_without_one(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", embedded_model_endpoint=EMBEDDED_ENDPOINT)
    result = initialise(settings)
    sessions = make_session_factory(make_engine(settings.database_url))
    with sessions() as session:
        resolved = resolve_feature(session, result.secret_box, Feature.CODE_COMPLETIONS)
        assert resolved.api_key is None


def test_embedded_model_skips_features_its_family_cannot_serve(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_model_api_key(data_dir)
    settings = make_settings(data_dir, embedded_model_endpoint=EMBEDDED_ENDPOINT)
    settings.instance.default_model_family = "codegemma"  # code features only (GitLab's matrix)
    initialise(settings)
    sessions = make_session_factory(make_engine(settings.database_url))
    with sessions() as session:
        assigned = {row.feature for row in session.scalars(select(FeatureSetting))}
    assert assigned == {"code_completions", "code_generations"}

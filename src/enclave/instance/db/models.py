"""The instance's tables (SQLAlchemy 2 typed ORM).

They follow GitLab's own model (``shared/reference/gitlab-instance.md`` §1) where it matters to
clients and admins: integer user ids (``GET /api/v4/user``), one feature-setting row per feature
with the provider enum disabled / vendored / self_hosted / unassigned, and self-hosted model
records with an encrypted API key. Every schema change goes through an Alembic migration in
``enclave/instance/migrations/versions``.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from enclave.instance.db.base import Base, UTCDateTime, utcnow

# Every id column is an INTEGER: 32 bits on PostgreSQL. A larger (or non-positive) id names
# nothing, and must not reach the database, which refuses it (SQLite cannot even bind ints
# past 64 bits): lookups treat it as "not found".
MAX_ID = 2**31 - 1


def id_can_exist(value: int) -> bool:
    return 0 < value <= MAX_ID


class FeatureProvider(StrEnum):
    """Who serves a feature (GitLab's ``Ai::FeatureSetting#provider``)."""

    DISABLED = "disabled"
    VENDORED = "vendored"
    SELF_HOSTED = "self_hosted"
    UNASSIGNED = "unassigned"


class ModelProvider(StrEnum):
    """How the gateway reaches a self-hosted model (GitLab's ``Ai::SelfHostedModel#provider``)."""

    API = "api"  # any OpenAI-compatible API (vLLM, Ollama, llama.cpp, TGI, LM Studio, ...)
    BEDROCK = "bedrock"
    AZURE_OPENAI = "azure_openai"
    VERTEX_AI = "vertex_ai"
    ANTHROPIC = "anthropic"


class InstanceSetting(Base):
    """Singleton row (id = 1): who this instance is."""

    __tablename__ = "instance_settings"
    __table_args__ = (CheckConstraint("id = 1", name="singleton"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False, default=1)
    instance_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    # Salt for X-Gitlab-Global-User-Id: the gateway sees a stable pseudonym per user, never
    # the raw id, and without the salt the pseudonym cannot be reversed by trying small ids.
    user_id_salt: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AiSetting(Base):
    """Singleton row (id = 1): instance-wide AI settings (GitLab's ``Ai::Setting``).

    NULL means "use the value from the configuration" (``instance.gateway_url`` /
    ``instance.gateway_timeout_s``), so a fresh install follows its config file until an
    administrator sets a value here; then every replica follows the database (within
    ``instance.cache_poll_s``, see ``instance/caches.py``).
    """

    __tablename__ = "ai_settings"
    __table_args__ = (
        CheckConstraint("id = 1", name="singleton"),
        CheckConstraint(
            "ai_gateway_timeout_seconds IS NULL OR "
            "(ai_gateway_timeout_seconds >= 60 AND ai_gateway_timeout_seconds <= 600)",
            name="timeout_range",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False, default=1)
    ai_gateway_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    # The shared gateway that serves vendored features (NULL: instance.vendored_gateway_url).
    vendored_ai_gateway_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    ai_gateway_timeout_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    enabled_instance_verbose_ai_logs: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    email: Mapped[str] = mapped_column(String(255), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    # argon2id hash (PHC string) for the web UI's sign-in; NULL: no password, PATs only.
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    tokens: Mapped[list[PersonalAccessToken]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def state(self) -> str:
        return "blocked" if self.blocked else "active"


class DeletedUser(Base):
    """A deleted user's pseudonym and PAT ids, kept while tokens made from them may live.

    The AI gateway learns revocations from the instance (``api/gateway_routes.py``): blocked
    users and revoked PATs that still exist. A deleted user's rows are gone, so this keeps
    what the gateway must go on refusing until those tokens have expired.
    """

    __tablename__ = "deleted_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    global_user_id: Mapped[str] = mapped_column(String(64), index=True)
    pat_ids: Mapped[list[int]] = mapped_column(JSON)
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class PersonalAccessToken(Base):
    """A PAT, stored as a SHA-256 digest: the plaintext exists only in the creator's hands."""

    __tablename__ = "personal_access_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters, so people can tell their tokens apart in lists.
    token_prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[User] = relationship(back_populates="tokens")


class SelfHostedModel(Base):
    """A model deployment the gateway can call (GitLab's ``Ai::SelfHostedModel``)."""

    __tablename__ = "ai_self_hosted_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    # Model family (mistral, codestral, llama3, gpt, claude_3, general, …): picks the prompts.
    family: Mapped[str] = mapped_column(String(50))
    provider: Mapped[str] = mapped_column(String(32), default=ModelProvider.API.value)
    endpoint: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    # LiteLLM-style id such as custom_openai/<served-name>.
    identifier: Mapped[str | None] = mapped_column(String(255), nullable=True)
    api_token_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    feature_settings: Mapped[list[FeatureSetting]] = relationship(
        back_populates="self_hosted_model", foreign_keys="FeatureSetting.self_hosted_model_id"
    )


class FeatureSetting(Base):
    """Which model serves a feature (GitLab's ``Ai::FeatureSetting``); one row per feature."""

    __tablename__ = "ai_feature_settings"
    __table_args__ = (
        CheckConstraint(
            "provider IN ('disabled', 'vendored', 'self_hosted', 'unassigned')", name="provider"
        ),
        CheckConstraint(
            "provider <> 'self_hosted' OR self_hosted_model_id IS NOT NULL",
            name="self_hosted_needs_model",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    feature: Mapped[str] = mapped_column(String(64), unique=True)
    provider: Mapped[str] = mapped_column(String(16), default=FeatureProvider.UNASSIGNED.value)
    # RESTRICT: a model that still serves a feature cannot be deleted by accident.
    self_hosted_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("ai_self_hosted_models.id", ondelete="RESTRICT"), nullable=True, index=True
    )
    # The model tried once when the primary one fails (issue 11); RESTRICT as above.
    fallback_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("ai_self_hosted_models.id", ondelete="RESTRICT"), nullable=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    self_hosted_model: Mapped[SelfHostedModel | None] = relationship(
        back_populates="feature_settings", foreign_keys=[self_hosted_model_id]
    )
    fallback_model: Mapped[SelfHostedModel | None] = relationship(foreign_keys=[fallback_model_id])


class AuditEvent(Base):
    """Who changed what. ``details`` never holds secrets (API keys, tokens)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # NULL for changes the instance made itself (bootstrap); kept when the user is deleted.
    author_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True
    )
    # Kept as written at the time: the event stays readable after the user is renamed or gone.
    author_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    ip_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class CacheGeneration(Base):
    """A change counter per cached kind (``auth``, ``models``): every change to the rows behind
    a kind bumps its generation in the same transaction, and each instance process drops its
    in-memory entries of a kind whose generation moved (``instance/caches.py``)."""

    __tablename__ = "cache_generations"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)


class WebSession(Base):
    """A signed-in web UI session; only a SHA-256 digest of the cookie's value is stored."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_digest: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # The synchronizer token every form of this session must send back (not a credential
    # on its own: useless without the session cookie).
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class EditorKey(Base):
    """A personal key for editor tools: a long-lived instance-signed JWT for the gateway's
    OpenAI-compatible API. Only its id is kept here (the JWT carries it), never the key."""

    __tablename__ = "editor_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # SET NULL, not CASCADE: a deleted user's keys must stay on record, so the gateway keeps
    # refusing them until they expire (a key without a user counts as revoked).
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    features: Mapped[list[str]] = mapped_column(JSON)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AiUsage(Base):
    """AI usage counts per minute, user, feature and model (``enclave.instance.usage``).

    Rows are written in batches by the background flush, never on the request path; several
    rows may share a key (one per flush and process): reports sum them. ``day`` is the UTC day
    of ``period_start``, stored so that grouping by day is the same query on every backend.
    """

    __tablename__ = "ai_usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    day: Mapped[date] = mapped_column(Date)
    # Kept (as NULL) when the user is deleted: the totals stay right.
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True
    )
    feature: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Who saw the requests: "instance" (its own endpoints) or "gateway" (direct paths).
    source: Mapped[str] = mapped_column(String(16))
    requests: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    latency_ms_total: Mapped[int] = mapped_column(BigInteger)

"""Audit events: who changed what, for admins and auditors.

Details describe the change (names, families, endpoints, scopes) and never carry secrets: API
keys and tokens are recorded only as "changed", as GitLab does, and every detail goes through
the shared redaction filter before it is stored, as a second line of defence.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from enclave.common.logging import redact
from enclave.instance.actor import SYSTEM, Actor
from enclave.instance.db.models import AuditEvent

# Action names (GitLab's where it has one).
USER_CREATED = "user_created"
USER_BLOCKED = "user_blocked"
USER_UNBLOCKED = "user_unblocked"
USER_DELETED = "user_deleted"
PERSONAL_ACCESS_TOKEN_CREATED = "personal_access_token_created"  # noqa: S105 - an action name
PERSONAL_ACCESS_TOKEN_REVOKED = "personal_access_token_revoked"  # noqa: S105 - an action name
SELF_HOSTED_MODEL_CREATED = "self_hosted_model_created"
SELF_HOSTED_MODEL_UPDATED = "self_hosted_model_updated"
SELF_HOSTED_MODEL_DESTROYED = "self_hosted_model_destroyed"
SELF_HOSTED_MODEL_FEATURE_CHANGED = "self_hosted_model_feature_changed"
AI_SETTINGS_UPDATED = "ai_settings_updated"
SECRET_KEY_ROTATED = "secret_key_rotated"  # noqa: S105 - an action name
SIGNING_KEY_ROTATED = "signing_key_rotated"
USER_PASSWORD_CHANGED = "user_password_changed"  # noqa: S105 - an action name
USER_SIGNED_IN = "user_signed_in"
EDITOR_KEY_CREATED = "editor_key_created"
EDITOR_KEY_REVOKED = "editor_key_revoked"

ACTIONS = frozenset(
    {
        USER_CREATED,
        USER_BLOCKED,
        USER_UNBLOCKED,
        USER_DELETED,
        PERSONAL_ACCESS_TOKEN_CREATED,
        PERSONAL_ACCESS_TOKEN_REVOKED,
        SELF_HOSTED_MODEL_CREATED,
        SELF_HOSTED_MODEL_UPDATED,
        SELF_HOSTED_MODEL_DESTROYED,
        SELF_HOSTED_MODEL_FEATURE_CHANGED,
        AI_SETTINGS_UPDATED,
        SECRET_KEY_ROTATED,
        SIGNING_KEY_ROTATED,
        USER_PASSWORD_CHANGED,
        USER_SIGNED_IN,
        EDITOR_KEY_CREATED,
        EDITOR_KEY_REVOKED,
    }
)


def record(
    session: Session,
    action: str,
    target: str,
    details: dict[str, Any] | None = None,
    *,
    author_id: int | None = None,
    actor: Actor | None = None,
) -> AuditEvent:
    """Add an audit event to ``session`` (it commits with the change it describes)."""
    if actor is None:
        actor = Actor(author_id, "system") if author_id is not None else SYSTEM
    event = AuditEvent(
        action=action,
        target=target,
        details=redact(details or {}),
        author_id=actor.user_id,
        author_name=actor.name,
        ip_address=actor.ip_address,
    )
    session.add(event)
    return event

"""Audit events: who changed what, for admins and auditors.

Details describe the change (names, families, endpoints, scopes) and never carry secrets: API
keys and tokens are recorded only as "changed", as GitLab does.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from enclave.instance.db.models import AuditEvent

# Action names (GitLab's where it has one).
USER_CREATED = "user_created"
PERSONAL_ACCESS_TOKEN_CREATED = "personal_access_token_created"  # noqa: S105 - an action name
SELF_HOSTED_MODEL_CREATED = "self_hosted_model_created"
SELF_HOSTED_MODEL_UPDATED = "self_hosted_model_updated"
SELF_HOSTED_MODEL_FEATURE_CHANGED = "self_hosted_model_feature_changed"


def record(
    session: Session,
    action: str,
    target: str,
    details: dict[str, Any] | None = None,
    *,
    author_id: int | None = None,
) -> AuditEvent:
    """Add an audit event to ``session`` (it commits with the change it describes)."""
    event = AuditEvent(action=action, target=target, details=details or {}, author_id=author_id)
    session.add(event)
    return event

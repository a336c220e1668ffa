"""Reading the audit log: filters, Enclave's flat shape and GitLab's ``/api/v4/audit_events``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from enclave.instance.accounts import gitlab_time
from enclave.instance.admin_errors import InvalidInputError
from enclave.instance.db.models import AuditEvent, id_can_exist

_TARGET_TYPES = {
    "ai_self_hosted_model": "Ai::SelfHostedModel",
    "ai_feature_setting": "Ai::FeatureSetting",
    "ai_settings": "Ai::Setting",
    "user": "User",
    "personal_access_token": "PersonalAccessToken",
    "secret_key": "Enclave::SecretKey",
    "signing_key": "Enclave::SigningKey",
    "editor_key": "Enclave::EditorKey",
}

_MESSAGES = {
    "user_created": "Created user {username}",
    "user_blocked": "Blocked user {username}",
    "user_unblocked": "Unblocked user {username}",
    "user_deleted": "Deleted user {username}",
    "personal_access_token_created": "Created personal access token {name} for {user}",
    "personal_access_token_revoked": "Revoked personal access token {name} of {user}",
    "self_hosted_model_created": "Self-hosted model {name} created ({model} at {endpoint})",
    "self_hosted_model_updated": "Self-hosted model {name} updated",
    "self_hosted_model_destroyed": "Self-hosted model {name} destroyed",
    "ai_settings_updated": "AI settings changed",
    "secret_key_rotated": "Secret key rotated",
    "user_password_changed": "Password of {username} changed",
    "user_signed_in": "{username} signed in to the web UI",
    "editor_key_created": "Created editor key {name} for {user}",
    "editor_key_revoked": "Revoked editor key {name} of {user}",
}


def parse_time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(
            f"{name} {value!r} is not an ISO 8601 time (2025-01-31 or 2025-01-31T12:00:00Z)",
            field=name,
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def list_events(
    session: Session,
    *,
    action: str | None = None,
    author_id: int | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> tuple[list[AuditEvent], int]:
    """Newest first."""
    query: Select[tuple[AuditEvent]] = select(AuditEvent)
    if action:
        query = query.where(AuditEvent.action == action)
    if author_id is not None:
        if not id_can_exist(author_id):
            return [], 0  # no such user, so no events by them
        query = query.where(AuditEvent.author_id == author_id)
    if created_after is not None:
        query = query.where(AuditEvent.created_at >= created_after)
    if created_before is not None:
        query = query.where(AuditEvent.created_at <= created_before)
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    query = query.order_by(AuditEvent.id.desc()).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query)), total


def message_of(event: AuditEvent) -> str:
    details = event.details or {}
    if isinstance(details.get("message"), str):
        return str(details["message"])
    template = _MESSAGES.get(event.action)
    if template is None:
        return event.action.replace("_", " ").capitalize()
    try:
        return template.format(**{k: v for k, v in details.items() if isinstance(k, str)})
    except (KeyError, IndexError):
        return event.action.replace("_", " ").capitalize()


def event_view(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "event_name": event.action,
        "author_id": event.author_id,
        "author_name": event.author_name or ("system" if event.author_id is None else None),
        "ip_address": event.ip_address,
        "target": event.target,
        "message": message_of(event),
        "details": event.details,
        "created_at": gitlab_time(event.created_at),
    }


def gitlab_event_view(event: AuditEvent) -> dict[str, Any]:
    """GitLab's instance-level audit event entity."""
    kind, _, target_id = event.target.partition("/")
    target_type = _TARGET_TYPES.get(kind, kind)
    details = event.details or {}
    return {
        "id": event.id,
        "author_id": event.author_id if event.author_id is not None else -1,
        "entity_id": 1,
        "entity_type": "Gitlab::Audit::InstanceScope",
        "event_name": event.action,
        "details": {
            "author_name": event.author_name or "system",
            "author_class": "User" if event.author_id is not None else "Gitlab::Audit::NullAuthor",
            "target_id": int(target_id) if target_id.isdigit() else (target_id or None),
            "target_type": target_type,
            "target_details": str(details.get("name") or details.get("feature") or event.target),
            "custom_message": message_of(event),
            "ip_address": event.ip_address,
            "entity_path": "gitlab_instance",
            **{k: v for k, v in details.items() if k not in ("message",)},
        },
        "created_at": gitlab_time(event.created_at),
    }

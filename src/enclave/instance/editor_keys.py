"""Personal editor keys: long-lived keys for editor tools that take a static OpenAI API key.

An editor key is an instance-signed JWT for the gateway's OpenAI-compatible API, like the
one-hour tokens of ``POST /api/v4/ai/openai/direct_access``, but with the expiry its owner
chose (at most ``instance.editor_key_max_days``), scopes limited to the chosen features, and
the claim ``enclave_editor_key_id``. The database keeps the key's id, name, features, expiry
and revocation time, never the key. A revoked key's id is published to the gateway in the
routes document until the key's own expiry (see ``api/gateway_routes.py``), so the gateway
refuses it within its routes refresh interval (``gateway.routes_refresh_s``, 30 s).

A key is signed by the instance's active signing key: once that key is rotated out of the JWKS
(``enclave keys rotate``), keys signed with it stop working and must be created again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from enclave.common import wire
from enclave.instance import audit
from enclave.instance.accounts import get_user, gitlab_time
from enclave.instance.actor import Actor
from enclave.instance.admin_errors import InvalidInputError, NotFoundError
from enclave.instance.db import utcnow
from enclave.instance.db.models import EditorKey, id_can_exist
from enclave.instance.features import FEATURE_UNIT_PRIMITIVES, Feature
from enclave.instance.gateway_client import pseudonymous_user_id
from enclave.instance.keys import KeyStore

MAX_NAME_CHARS = 255
# A user's live keys: enough for every editor on every machine, not a list to grow forever.
MAX_ACTIVE_KEYS_PER_USER = 50


@dataclass(frozen=True)
class Signer:
    """What minting needs from the instance."""

    keys: KeyStore = field(repr=False)
    issuer: str
    instance_id: str
    user_id_salt: bytes = field(repr=False)


@dataclass(frozen=True)
class CreatedKey:
    row: EditorKey
    key: str = field(repr=False)


def parse_features(value: Any) -> list[Feature]:
    """The chosen feature names (a list, or one comma/space separated string)."""
    if isinstance(value, str):
        value = [part for part in value.replace(",", " ").split() if part]
    if not isinstance(value, list | tuple) or not value:
        raise InvalidInputError(
            "features is missing: choose the AI features the key may use "
            f"({', '.join(f.value for f in Feature)})",
            field="features",
        )
    features: list[Feature] = []
    for name in value:
        try:
            feature = Feature(name)
        except ValueError:
            raise InvalidInputError(
                f"feature {name!r} is unknown; use one of: {', '.join(f.value for f in Feature)}",
                field="features",
            ) from None
        if feature not in features:
            features.append(feature)
    return features


def parse_days(value: Any, max_days: int) -> int:
    """The key's lifetime in whole days, 1 to ``max_days`` (the administrator's maximum)."""
    try:
        days = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        days = None
    if days is None:
        raise InvalidInputError(
            f"expires_in_days {value!r} is not a number of days (1 to {max_days})",
            field="expires_in_days",
        )
    if not 1 <= days <= max_days:
        raise InvalidInputError(
            f"expires_in_days must be between 1 and {max_days} (the maximum an administrator "
            "set with ENCLAVE_INSTANCE__EDITOR_KEY_MAX_DAYS)",
            field="expires_in_days",
        )
    return days


def _mint(signer: Signer, row: EditorKey, user_id: int) -> str:
    issued_at = int(row.created_at.timestamp())
    claims: dict[str, Any] = {
        "iss": signer.issuer,
        "sub": pseudonymous_user_id(signer.user_id_salt, user_id),
        "gitlab_instance_id": signer.instance_id,
        "aud": wire.AUDIENCE,
        "gitlab_realm": wire.REALM_SELF_MANAGED,
        "scopes": sorted({FEATURE_UNIT_PRIMITIVES[Feature(name)] for name in row.features}),
        wire.CLAIM_SURFACE: wire.SURFACE_OPENAI,
        wire.CLAIM_EDITOR_KEY_ID: row.id,
        "iat": issued_at,
        "nbf": issued_at - wire.NOT_BEFORE_SKEW_S,
        "exp": int(row.expires_at.timestamp()),
        "jti": str(uuid.uuid4()),
    }
    key = signer.keys.active
    return jwt.encode(
        claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "JWT"}
    )


def create_key(
    session: Session,
    signer: Signer,
    user_id: int,
    *,
    name: Any,
    features: Any,
    expires_in_days: Any,
    max_days: int,
    actor: Actor,
) -> CreatedKey:
    """A new key for ``user_id`` (audited); the key itself is returned once, never stored."""
    user = get_user(session, user_id)
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(
            "name is missing: name the key after the editor or machine it is for", field="name"
        )
    if len(name.strip()) > MAX_NAME_CHARS:
        raise InvalidInputError(
            f"name is too long (at most {MAX_NAME_CHARS} characters)", field="name"
        )
    chosen = parse_features(features)
    days = parse_days(expires_in_days, max_days)
    if len(active_keys(session, user_id)) >= MAX_ACTIVE_KEYS_PER_USER:
        raise InvalidInputError(
            f"{user.username} has {MAX_ACTIVE_KEYS_PER_USER} active editor keys, the most "
            "allowed: revoke one you no longer use first",
            field="name",
        )
    now = utcnow().replace(microsecond=0)
    row = EditorKey(
        user_id=user.id,
        name=name.strip(),
        features=[feature.value for feature in chosen],
        created_at=now,
        expires_at=now + timedelta(days=days),
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        audit.EDITOR_KEY_CREATED,
        f"editor_key/{row.id}",
        {
            "user": user.username,
            "name": row.name,
            "features": list(row.features),
            "expires_at": gitlab_time(row.expires_at),
        },
        actor=actor,
    )
    return CreatedKey(row, _mint(signer, row, user.id))


def active_keys(session: Session, user_id: int, now: datetime | None = None) -> list[EditorKey]:
    now = now or utcnow()
    return list(
        session.scalars(
            select(EditorKey).where(
                EditorKey.user_id == user_id,
                EditorKey.revoked_at.is_(None),
                EditorKey.expires_at > now,
            )
        )
    )


def list_keys(session: Session, user_id: int) -> list[EditorKey]:
    """Every key of ``user_id``, newest first (revoked and expired ones too)."""
    if not id_can_exist(user_id):
        return []
    return list(
        session.scalars(
            select(EditorKey).where(EditorKey.user_id == user_id).order_by(EditorKey.id.desc())
        )
    )


def revoke_key(session: Session, user_id: int, key_id: int, actor: Actor) -> EditorKey:
    """Revoke one of ``user_id``'s keys; idempotent. Another user's key is "not found"."""
    row = session.get(EditorKey, key_id) if id_can_exist(key_id) else None
    if row is None or row.user_id != user_id:
        raise NotFoundError(f"editor key {key_id} does not exist", field="id")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        user = get_user(session, user_id)
        audit.record(
            session,
            audit.EDITOR_KEY_REVOKED,
            f"editor_key/{row.id}",
            {"user": user.username, "name": row.name},
            actor=actor,
        )
        session.flush()
    return row


def key_view(row: EditorKey, now: datetime | None = None) -> dict[str, Any]:
    """The key's record, GitLab-style (never the key)."""
    now = now or utcnow()
    return {
        "id": row.id,
        "name": row.name,
        "features": list(row.features),
        "created_at": gitlab_time(row.created_at),
        "expires_at": gitlab_time(row.expires_at),
        "revoked": row.revoked_at is not None,
        "revoked_at": gitlab_time(row.revoked_at),
        "active": row.revoked_at is None and row.expires_at > now,
    }


def revoked_ids(session: Session, limit: int, now: datetime | None = None) -> list[int]:
    """Revoked keys (and keys of deleted users) that have not expired yet, newest expiry first:
    the gateway must refuse them (after their expiry the signature check refuses them)."""
    now = now or utcnow()
    return list(
        session.scalars(
            select(EditorKey.id)
            .where(
                or_(EditorKey.revoked_at.is_not(None), EditorKey.user_id.is_(None)),
                EditorKey.expires_at > now,
            )
            .order_by(EditorKey.expires_at.desc())
            .limit(limit)
        )
    )


def users_with_live_keys(now: datetime | None = None) -> Any:
    """A subquery of the users that hold an unexpired editor key (for the blocked-users list)."""
    return select(EditorKey.user_id).where(EditorKey.expires_at > (now or utcnow()))

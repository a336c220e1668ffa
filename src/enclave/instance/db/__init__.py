"""The instance database: typed ORM models, engine/session factory, migrations runner."""

from enclave.instance.db.base import Base, UTCDateTime, utcnow
from enclave.instance.db.engine import make_engine, make_session_factory
from enclave.instance.db.migrate import current_revision, downgrade, head_revision, upgrade
from enclave.instance.db.models import (
    AiSetting,
    AiUsage,
    AuditEvent,
    DeletedUser,
    FeatureProvider,
    FeatureSetting,
    InstanceSetting,
    ModelProvider,
    PersonalAccessToken,
    SelfHostedModel,
    User,
)

__all__ = [
    "AiSetting",
    "AiUsage",
    "AuditEvent",
    "Base",
    "DeletedUser",
    "FeatureProvider",
    "FeatureSetting",
    "InstanceSetting",
    "ModelProvider",
    "PersonalAccessToken",
    "SelfHostedModel",
    "UTCDateTime",
    "User",
    "current_revision",
    "downgrade",
    "head_revision",
    "make_engine",
    "make_session_factory",
    "upgrade",
    "utcnow",
]

"""The instance's runtime context: everything a request handler needs, built once per process."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from enclave.common.shared_store import SharedStore
from enclave.config import EnclaveSettings
from enclave.instance.bootstrap import BootstrapResult
from enclave.instance.chat_events import ChatEvents
from enclave.instance.chat_history import ChatHistory
from enclave.instance.db.engine import make_engine, make_session_factory
from enclave.instance.gateway_client import GatewayClient, host_name
from enclave.instance.keys import KeyStore
from enclave.instance.limits import InstanceLimits
from enclave.instance.secrets import SecretBox
from enclave.instance.tokens import TokenMinter
from enclave.instance.usage import UsageRecorder


@dataclass
class InstanceContext:
    settings: EnclaveSettings
    engine: Engine
    sessions: sessionmaker[Session]
    keys: KeyStore
    minter: TokenMinter
    secret_box: SecretBox = field(repr=False)
    instance_id: uuid.UUID
    user_id_salt: bytes = field(repr=False)
    issuer: str
    host_name: str
    gateway: GatewayClient
    # Per-user and per-address limits (in process, or in the shared Redis), and the metrics
    # that count them.
    limits: InstanceLimits
    # AI usage counted in memory, written in batches by the app's background flush.
    usage: UsageRecorder
    # Editor chat conversations (GraphQL aiAction / aiMessages), in memory, bounded.
    chat_history: ChatHistory = field(default_factory=ChatHistory)
    # The same chats' answers pushed to ActionCable subscribers as they are generated.
    chat_events: ChatEvents = field(default_factory=ChatEvents)

    @classmethod
    def build(cls, settings: EnclaveSettings, boot: BootstrapResult) -> InstanceContext:
        engine = make_engine(
            settings.database_url,
            busy_timeout_ms=round(settings.instance.database_busy_timeout_s * 1000),
        )
        issuer = settings.instance.issuer()
        limits = InstanceLimits(
            settings.instance, store=SharedStore.from_settings(settings, "instance")
        )
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_session_factory(engine),
            keys=boot.keys,
            minter=TokenMinter(
                boot.keys,
                issuer=issuer,
                instance_id=boot.instance_id,
                lifetime_s=settings.instance.token_lifetime_s,
            ),
            secret_box=boot.secret_box,
            instance_id=boot.instance_id,
            user_id_salt=boot.user_id_salt,
            issuer=issuer,
            host_name=host_name(issuer),
            gateway=GatewayClient(
                settings.instance.gateway_url, settings.instance.gateway_timeout_s
            ),
            limits=limits,
            usage=UsageRecorder(max_keys=settings.instance.usage_max_keys, observer=limits.metrics),
        )

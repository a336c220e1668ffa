"""Test connection from the web UI: the same check as ``enclave models test`` and the admin API
(:func:`enclave.instance.connection.check_connection`, through the AI gateway), and the last
result per model, kept in this process's memory for the dashboard and the models page."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from enclave.instance import ai_settings, registry
from enclave.instance.api.deps import in_transaction
from enclave.instance.connection import (
    ConnectionResult,
    ModelUnderTest,
    check_connection,
    saved_model_under_test,
)
from enclave.instance.context import InstanceContext
from enclave.instance.db import utcnow
from enclave.instance.gateway_client import ForwardIdentity, pseudonymous_user_id

# Models are few; the bound only keeps a long-lived process from growing without end.
MAX_REMEMBERED = 1000


@dataclass(frozen=True)
class TestRecord:
    model_id: int
    model_name: str
    result: ConnectionResult
    at: datetime


_lock = threading.Lock()
_last: dict[int, TestRecord] = {}


def last_results() -> dict[int, TestRecord]:
    with _lock:
        return dict(_last)


def _remember(record: TestRecord) -> None:
    with _lock:
        if len(_last) >= MAX_REMEMBERED and record.model_id not in _last:
            _last.pop(next(iter(_last)))
        _last[record.model_id] = record


def _under_test(ctx: InstanceContext, model_id: int) -> tuple[ModelUnderTest, str]:
    def work(session: Session) -> tuple[ModelUnderTest, str]:
        under_test = saved_model_under_test(ctx.secret_box, registry.get_model(session, model_id))
        return under_test, ai_settings.effective(session, ctx.settings).ai_gateway_url

    return in_transaction(ctx, work)


async def test_model(
    ctx: InstanceContext, model_id: int, user_id: int, request_id: str
) -> TestRecord:
    """Run the connection check for a saved model and remember its result."""
    model, gateway_url = await run_in_threadpool(_under_test, ctx, model_id)
    identity = ForwardIdentity(
        instance_id=str(ctx.instance_id),
        host_name=ctx.host_name,
        global_user_id=pseudonymous_user_id(ctx.user_id_salt, user_id),
        request_id=request_id,
    )
    result = await check_connection(ctx.gateway, ctx.minter, identity, model, base_url=gateway_url)
    record = TestRecord(model_id, model.name, result, utcnow())
    _remember(record)
    return record

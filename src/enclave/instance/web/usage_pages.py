"""``/admin/usage``: requests, errors, tokens and latency per day (a bar chart), per feature and
model, and per user, over the chosen number of days (``instance/usage.py`` reports them; the
same numbers as ``GET /api/v4/admin/ai/usage`` and ``enclave usage``)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from enclave.instance.api.deps import context_of, in_transaction
from enclave.instance.db import utcnow
from enclave.instance.usage import UsageRow, usage_report
from enclave.instance.web.charts import bar_chart
from enclave.instance.web.errors import WebError
from enclave.instance.web.render import page
from enclave.instance.web.routing import WebRoute
from enclave.instance.web.session_auth import signed_in_admin
from enclave.instance.web_sessions import SignedIn

router = APIRouter(route_class=WebRoute, include_in_schema=False)
Admin = Annotated[SignedIn, Depends(signed_in_admin)]

PERIODS = (1, 7, 30, 90)
DEFAULT_DAYS = 7


def _days(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_DAYS
    if not raw.isdigit() or int(raw) not in PERIODS:
        raise WebError(400, f"days {raw!r}: choose one of {', '.join(map(str, PERIODS))}")
    return int(raw)


def _per_day(rows: list[UsageRow], first: date, days: int) -> list[tuple[str, float]]:
    """One bar per day of the period, zero where nothing was recorded."""
    counts = {row.day: row.requests for row in rows if row.day is not None}
    return [
        ((first + timedelta(days=n)).strftime("%m-%d"), counts.get(first + timedelta(days=n), 0))
        for n in range(days)
    ]


def _reports(
    session: Session, since: datetime
) -> tuple[list[UsageRow], list[UsageRow], list[UsageRow]]:
    return (
        usage_report(session, since=since, group_by=("day",)),
        usage_report(session, since=since, group_by=("feature", "model")),
        usage_report(session, since=since, group_by=("user", "feature")),
    )


@router.get("/admin/usage")
async def usage_page(request: Request, user: Admin) -> Response:
    days = _days(request.query_params.get("days"))
    today = utcnow().date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), tzinfo=utcnow().tzinfo)
    ctx = context_of(request)
    per_day, by_model, by_user = await run_in_threadpool(
        in_transaction, ctx, lambda s: _reports(s, since)
    )
    return page(
        request,
        "usage.html",
        days=days,
        periods=PERIODS,
        chart=bar_chart(_per_day(per_day, first, days), title=f"Requests per day, last {days}"),
        by_model=by_model,
        by_user=by_user,
        total_requests=sum(row.requests for row in by_model),
        total_errors=sum(row.errors for row in by_model),
    )

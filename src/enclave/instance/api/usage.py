"""AI usage over HTTP: reports for administrators and users, and the gateway's pushes.

* ``GET /api/v4/admin/ai/usage`` (admin): ``since``, ``until`` (ISO 8601; default the last 30
  days), ``group_by`` (comma-separated: user, feature, model, day; default feature,model) and
  ``user_id``;
* ``GET /api/v4/user/ai/usage``: the same for the caller's own usage (no ``user_id``, no
  grouping by user);
* ``POST /api/v4/internal/ai/usage`` (internal, the gateway only): the counts of the paths that
  reach the gateway directly with a user's token, presented with the routes secret (as
  ``/api/v4/internal/ai/gateway_routes``; checked before a body byte is read). They join the
  instance's in-memory buffer; the user is the pseudonym the tokens carry, mapped at flush.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from enclave.common.logging import get_logger
from enclave.instance.admin_errors import InvalidInputError
from enclave.instance.api.deps import admin_user, authenticated, context_of, in_transaction
from enclave.instance.api.errors import InstanceAPIError
from enclave.instance.api.gateway_routes import require_gateway_secret
from enclave.instance.api.routing import InstanceRoute
from enclave.instance.audit_views import parse_time
from enclave.instance.db.models import id_can_exist
from enclave.instance.features import Feature
from enclave.instance.pats import SCOPE_API, SCOPE_READ_API, Principal
from enclave.instance.usage import GROUPS, SOURCE_GATEWAY, Counts, row_view, usage_report

log = get_logger(__name__)

ADMIN_PATH: Final = "/api/v4/admin/ai/usage"
USER_PATH: Final = "/api/v4/user/ai/usage"
PUSH_PATH: Final = "/api/v4/internal/ai/usage"
DEFAULT_DAYS: Final = 30
# A push of the gateway: at most this many entries (the gateway sends at most 2000).
MAX_PUSH_ENTRIES: Final = 10_000
MAX_PUSH_BYTES: Final = 4 * 1024 * 1024
# Pushed minutes further from now than this are refused (a clock far off, or a replay).
MAX_PUSH_AGE_S: Final = 86_400
FEATURE_NAMES: Final = frozenset(feature.value for feature in Feature)

Admin = Annotated[Principal, Depends(admin_user)]
Reader = Annotated[Principal, Depends(authenticated({SCOPE_API, SCOPE_READ_API}))]

Since = Annotated[str | None, Query(description="ISO 8601 time, inclusive. Default: 30 days ago.")]
Until = Annotated[str | None, Query(description="ISO 8601 time, exclusive. Default: now.")]
GroupBy = Annotated[
    str | None,
    Query(description="Comma-separated: user, feature, model, day. Default: feature,model."),
]
UserId = Annotated[str | None, Query(description="Only this user's usage (admin report).")]


def parse_window(since: str | None, until: str | None) -> tuple[datetime, datetime | None]:
    start = parse_time(since, "since") or datetime.now(UTC) - timedelta(days=DEFAULT_DAYS)
    end = parse_time(until, "until")
    if end is not None and end <= start:
        raise InvalidInputError(
            f"until ({end.isoformat()}) must be after since ({start.isoformat()})", field="until"
        )
    return start, end


def parse_groups(value: str | None, *, allow_user: bool) -> tuple[str, ...]:
    if value is None:
        return ("feature", "model")
    groups = tuple(part.strip() for part in value.split(",") if part.strip())
    allowed = GROUPS if allow_user else tuple(g for g in GROUPS if g != "user")
    unknown = [g for g in groups if g not in allowed]
    if unknown:
        raise InvalidInputError(
            f"group_by {', '.join(map(repr, unknown))} is not one of {', '.join(allowed)}; "
            "give a comma-separated list such as group_by=feature,model",
            field="group_by",
        )
    return groups


def parse_user_id(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.strip().isdigit() or not id_can_exist(int(value.strip())):
        raise InvalidInputError(
            f"user_id {value!r} is not a user id (a positive integer, see GET /api/v4/users)",
            field="user_id",
        )
    return int(value.strip())


def _report(
    request: Request,
    since: str | None,
    until: str | None,
    group_by: tuple[str, ...],
    user_id: int | None,
) -> dict[str, Any]:
    start, end = parse_window(since, until)

    def work(session: Session) -> list[dict[str, Any]]:
        rows = usage_report(session, since=start, until=end, group_by=group_by, user_id=user_id)
        return [row_view(row) for row in rows]

    return {
        "since": start.isoformat(),
        "until": end.isoformat() if end else None,
        "group_by": list(group_by),
        "rows": in_transaction(context_of(request), work),
    }


router = APIRouter(tags=["usage"], route_class=InstanceRoute)


@router.get(ADMIN_PATH, summary="AI usage per user, feature, model and/or day (admin)")
def admin_usage(
    request: Request,
    principal: Admin,
    since: Since = None,
    until: Until = None,
    group_by: GroupBy = None,
    user_id: UserId = None,
) -> dict[str, Any]:
    groups = parse_groups(group_by, allow_user=True)
    return _report(request, since, until, groups, parse_user_id(user_id))


@router.get(USER_PATH, summary="The caller's own AI usage")
def own_usage(
    request: Request,
    principal: Reader,
    since: Since = None,
    until: Until = None,
    group_by: GroupBy = None,
) -> dict[str, Any]:
    groups = parse_groups(group_by, allow_user=False)
    return _report(request, since, until, groups, principal.user_id)


# --- the gateway's pushes -------------------------------------------------------------------


class PushedUsage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=128)
    feature: str = Field(min_length=1, max_length=64)
    model: str | None = Field(None, max_length=255)
    minute: int = Field(ge=0)
    requests: int = Field(ge=1, le=10**9)
    errors: int = Field(ge=0, le=10**9)
    input_tokens: int = Field(ge=0, le=10**15)
    output_tokens: int = Field(ge=0, le=10**15)
    latency_ms_total: int = Field(ge=0, le=10**15)


class UsagePush(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(1, ge=1, le=1)
    entries: list[PushedUsage] = Field(max_length=MAX_PUSH_ENTRIES)


async def check_gateway_secret(request: Request) -> None:
    """404 without a configured secret (the endpoint is not there), 401 for a wrong one."""
    await require_gateway_secret(request, log, "usage_push_unauthorized")


class GatewaySecretRoute(InstanceRoute):
    """The routes secret is checked before the (bounded) body is read."""

    fixed_limit = MAX_PUSH_BYTES

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def route(request: Request) -> Response:
            await check_gateway_secret(request)
            return await inner(request)

        return route


internal_router = APIRouter(route_class=GatewaySecretRoute)


@internal_router.post(PUSH_PATH, include_in_schema=False, status_code=204)
async def push_usage(request: Request) -> Response:
    try:
        push = UsagePush.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = exc.errors()
        where = ".".join(str(part) for part in errors[0]["loc"]) if errors else ""
        message = errors[0]["msg"] if errors else "not a usage push"
        raise InstanceAPIError(
            400, f"usage push: {where or 'body'} is invalid: {message}"
        ) from None
    now_minute = int(time.time() // 60)
    limit = MAX_PUSH_AGE_S // 60
    recorder = context_of(request).usage
    refused = 0
    for entry in push.entries:
        # Known features only: they label /metrics, whose series must stay bounded.
        if abs(entry.minute - now_minute) > limit or entry.feature not in FEATURE_NAMES:
            refused += entry.requests
            continue
        recorder.record(
            feature=entry.feature,
            model=entry.model,
            counts=Counts(
                entry.requests,
                entry.errors,
                entry.input_tokens,
                entry.output_tokens,
                entry.latency_ms_total,
            ),
            pseudonym=entry.user,
            source=SOURCE_GATEWAY,
            at=entry.minute * 60,
        )
    if refused:
        log.warning("usage_push_entries_refused", requests=refused)
    log.info("usage_push_received", entries=len(push.entries))
    return Response(status_code=204)

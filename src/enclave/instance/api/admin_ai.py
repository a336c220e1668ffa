"""Admin REST API for AI configuration, under ``/api/v4/admin/ai/``.

Self-hosted models (list / create / show / update / delete / test connection), feature
settings, AI settings and the audit log; plus GitLab's ``/api/v4/audit_events``. Every route
needs an administrator's personal access token with scope ``api`` (401 without a valid token,
403 for anyone else). Lists are paginated the GitLab way (``page``, ``per_page``; ``X-Total``,
``X-Next-Page``, ``Link``, ...). Errors are ``{"message": "400 Bad request - <what and how to
fix>", "errors": {<field>: [...]}}``; API keys are accepted but never returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from enclave.instance import ai_settings, audit_views, registry
from enclave.instance.api.deps import actor_of, admin_user, context_of, in_transaction
from enclave.instance.api.forwarding import forward_identity
from enclave.instance.api.pagination import Page, page_params, set_headers
from enclave.instance.api.routing import InstanceRoute
from enclave.instance.connection import (
    ConnectionResult,
    ModelUnderTest,
    check_connection,
    saved_model_under_test,
)
from enclave.instance.context import InstanceContext
from enclave.instance.feature_settings import (
    KEEP,
    Keep,
    get_feature_setting,
    list_feature_settings,
    parse_feature,
    parse_provider,
    set_features,
)
from enclave.instance.pats import Principal

router = APIRouter(tags=["admin: AI"], route_class=InstanceRoute)
audit_router = APIRouter(tags=["audit events"], route_class=InstanceRoute)

PREFIX = "/api/v4/admin/ai"
Admin = Annotated[Principal, Depends(admin_user)]
Paging = Annotated[Page, Depends(page_params)]


# --- bodies (documented in /openapi.json) ---------------------------------------------------


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="Deployment name, unique.", examples=["mistral"])
    model: str | None = Field(
        None,
        description="Model family: mistral, mixtral, codestral, llama3, codellama, codegemma, "
        "deepseekcoder, gpt, qwen, gemini, claude_3 or general.",
        examples=["mistral"],
    )
    provider: str | None = Field(
        "api",
        description="How the gateway reaches the model: api (OpenAI-compatible), "
        "azure_openai, bedrock, vertex_ai or anthropic.",
    )
    endpoint: str | None = Field(
        None,
        description="http(s) URL of the model server (OpenAI-compatible: ending in /v1). "
        "Required for api and azure_openai.",
        examples=["http://vllm.internal:8000/v1"],
    )
    identifier: str | None = Field(
        None,
        description="LiteLLM-style model id: custom_openai/<served-name>, azure/<deployment>, "
        "bedrock/<model-id>, vertex_ai/<model>, anthropic/<model>.",
        examples=["custom_openai/Mistral-7B-Instruct-v0.3"],
    )
    region: str | None = Field(
        None,
        description="Amazon Bedrock: the AWS region (instead of an endpoint); saved as the "
        "endpoint https://bedrock-runtime.<region>.amazonaws.com, which the gateway uses "
        "before its own ENCLAVE_GATEWAY__BEDROCK_REGION.",
        examples=["eu-central-1"],
    )
    project: str | None = Field(
        None,
        description="Google Vertex AI: the Google Cloud project (with location); saved in the "
        "endpoint (<API base>/v1/projects/<project>/locations/<location>), which the gateway "
        "uses before its own VERTEX_PROJECT and VERTEX_LOCATION.",
    )
    location: str | None = Field(
        None, description="Google Vertex AI: the location (with project), e.g. us-east5 or global."
    )
    api_token: str | None = Field(
        None,
        description="API key of the model server; stored encrypted, never returned.",
        json_schema_extra={"writeOnly": True},
    )


class ModelUpdate(ModelCreate):
    provider: str | None = Field(None, description="See create.")
    keep_api_token: bool | None = Field(
        None,
        description="Moving the endpoint to another host (scheme, host or port) while an API "
        "key is stored needs the key again in api_token, or this set to true to send the "
        "stored key to the new host.",
    )


def _rules(ctx: InstanceContext) -> registry.EndpointRules:
    return registry.EndpointRules.from_settings(ctx.settings.instance)


class FeatureUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str = Field(
        description="disabled, vendored, self_hosted or unassigned (chat sub-features then "
        "follow duo_chat)."
    )
    self_hosted_model_id: int | str | None = Field(
        None, description="The model (id or name) when provider is self_hosted."
    )
    fallback_model_id: int | str | None = Field(
        None,
        description="A second self-hosted model (id or name) tried once when the primary one "
        "fails; null clears it, leaving it out keeps the current one.",
    )

    def fallback_ref(self) -> int | str | Keep | None:
        return self.fallback_model_id if "fallback_model_id" in self.model_fields_set else KEEP


class FeatureBatchUpdate(FeatureUpdate):
    features: list[str] = Field(description='Features to set, e.g. ["duo_chat"].')


class SettingsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ai_gateway_url: str | None = Field(
        None, description="AI gateway URL (http/https); null goes back to the configured one."
    )
    vendored_ai_gateway_url: str | None = Field(
        None,
        description="Shared AI gateway URL (http/https) for features set to vendored; null "
        "goes back to the configured one (none by default: vendored cannot be chosen).",
    )
    ai_gateway_timeout_seconds: int | None = Field(
        None, description="Timeout for gateway requests, 60-600 s; null goes back to config."
    )
    enabled_instance_verbose_ai_logs: bool | None = Field(
        None, description="Ask the gateway to log prompts and answers (verbose AI logs)."
    )


# --- self-hosted models ---------------------------------------------------------------------


@router.get(f"{PREFIX}/self_hosted_models", summary="List self-hosted models")
def list_models(
    request: Request, response: Response, principal: Admin, page: Paging
) -> list[dict[str, Any]]:
    ctx = context_of(request)

    def work(session: Session) -> list[dict[str, Any]]:
        rows, total = registry.list_models(session, offset=page.offset, limit=page.per_page)
        set_headers(request, response, page, total)
        return [registry.model_view(row) for row in rows]

    return in_transaction(ctx, work)


@router.post(f"{PREFIX}/self_hosted_models", status_code=201, summary="Register a model")
def create_model(request: Request, body: ModelCreate, principal: Admin) -> dict[str, Any]:
    ctx = context_of(request)
    spec = registry.ModelSpec.parse(body.model_dump())
    actor = actor_of(request, principal)
    return in_transaction(
        ctx,
        lambda s: registry.model_view(
            registry.create_model(s, ctx.secret_box, spec, actor, rules=_rules(ctx))
        ),
        write=True,
    )


@router.get(f"{PREFIX}/self_hosted_models/{{model_id}}", summary="Show a model")
def show_model(request: Request, model_id: int, principal: Admin) -> dict[str, Any]:
    ctx = context_of(request)
    return in_transaction(ctx, lambda s: registry.model_view(registry.get_model(s, model_id)))


_UPDATE_MODEL = 'Update a model (absent fields keep their value; api_token "" removes the key)'


@router.put(f"{PREFIX}/self_hosted_models/{{model_id}}", summary=_UPDATE_MODEL)
@router.patch(
    f"{PREFIX}/self_hosted_models/{{model_id}}", summary=_UPDATE_MODEL, operation_id="patch_model"
)
def update_model(
    request: Request, model_id: int, body: ModelUpdate, principal: Admin
) -> dict[str, Any]:
    ctx = context_of(request)
    changes = body.model_dump(exclude_unset=True)
    actor = actor_of(request, principal)
    return in_transaction(
        ctx,
        lambda s: registry.model_view(
            registry.update_model(s, ctx.secret_box, model_id, changes, actor, rules=_rules(ctx))
        ),
        write=True,
    )


@router.delete(
    f"{PREFIX}/self_hosted_models/{{model_id}}",
    status_code=204,
    summary="Delete a model (refused with 409 while features use it)",
)
def delete_model(request: Request, model_id: int, principal: Admin) -> Response:
    ctx = context_of(request)
    actor = actor_of(request, principal)
    in_transaction(ctx, lambda s: registry.delete_model(s, model_id, actor), write=True)
    return Response(status_code=204)


async def _run_check(
    request: Request, principal: Principal, model: ModelUnderTest
) -> ConnectionResult:
    ctx = context_of(request)
    effective = await run_in_threadpool(
        in_transaction, ctx, lambda s: ai_settings.effective(s, ctx.settings)
    )
    identity = forward_identity(ctx, request, principal)
    return await check_connection(
        ctx.gateway, ctx.minter, identity, model, base_url=effective.ai_gateway_url
    )


def _under_test(ctx: InstanceContext, model_id: int) -> ModelUnderTest:
    return in_transaction(
        ctx, lambda s: saved_model_under_test(ctx.secret_box, registry.get_model(s, model_id))
    )


@router.post(
    f"{PREFIX}/self_hosted_models/{{model_id}}/test",
    summary="Test the connection to a registered model through the AI gateway",
)
async def test_model(request: Request, model_id: int, principal: Admin) -> dict[str, Any]:
    ctx = context_of(request)
    model = await run_in_threadpool(_under_test, ctx, model_id)
    return (await _run_check(request, principal, model)).view()


@router.post(
    f"{PREFIX}/self_hosted_models/test",
    summary="Test a model definition before saving it (same body as create)",
)
async def test_unsaved_model(
    request: Request, body: ModelCreate, principal: Admin
) -> dict[str, Any]:
    data = body.model_dump()
    if not data.get("name"):
        data["name"] = "connection-test"
    spec = registry.ModelSpec.parse(data)
    await run_in_threadpool(_rules(context_of(request)).check, spec.endpoint)  # may resolve DNS
    model = ModelUnderTest(
        spec.name, spec.family, spec.provider, spec.endpoint, spec.identifier, spec.api_token
    )
    return (await _run_check(request, principal, model)).view()


# --- feature settings -----------------------------------------------------------------------


@router.get(f"{PREFIX}/feature_settings", summary="List every feature and what serves it")
def list_features(
    request: Request, response: Response, principal: Admin, page: Paging
) -> list[dict[str, Any]]:
    ctx = context_of(request)
    views: list[dict[str, Any]] = in_transaction(
        ctx, lambda s: list_feature_settings(s, ai_settings.effective(s, ctx.settings))
    )
    set_headers(request, response, page, len(views))
    return views[page.offset : page.offset + page.per_page]


@router.get(f"{PREFIX}/feature_settings/{{feature}}", summary="Show one feature setting")
def show_feature(request: Request, feature: str, principal: Admin) -> dict[str, Any]:
    ctx = context_of(request)
    parsed = parse_feature(feature)
    return in_transaction(
        ctx, lambda s: get_feature_setting(s, parsed, ai_settings.effective(s, ctx.settings))
    )


_UPDATE_FEATURE = "Set one feature to disabled, vendored, a self-hosted model, or unassigned"


@router.put(f"{PREFIX}/feature_settings/{{feature}}", summary=_UPDATE_FEATURE)
@router.patch(
    f"{PREFIX}/feature_settings/{{feature}}", summary=_UPDATE_FEATURE, operation_id="patch_feature"
)
def update_feature(
    request: Request, feature: str, body: FeatureUpdate, principal: Admin
) -> dict[str, Any]:
    ctx = context_of(request)
    parsed = parse_feature(feature)
    provider = parse_provider(body.provider)
    actor = actor_of(request, principal)
    views = in_transaction(
        ctx,
        lambda s: set_features(
            s,
            [parsed],
            provider,
            body.self_hosted_model_id,
            actor,
            body.fallback_ref(),
            ai_settings.effective(s, ctx.settings),
        ),
        write=True,
    )
    return views[0]


@router.put(f"{PREFIX}/feature_settings", summary="Set several features at once (all or none)")
def update_features(
    request: Request, body: FeatureBatchUpdate, principal: Admin
) -> list[dict[str, Any]]:
    ctx = context_of(request)
    features = [parse_feature(name) for name in body.features]
    provider = parse_provider(body.provider)
    actor = actor_of(request, principal)
    return in_transaction(
        ctx,
        lambda s: set_features(
            s,
            features,
            provider,
            body.self_hosted_model_id,
            actor,
            body.fallback_ref(),
            ai_settings.effective(s, ctx.settings),
        ),
        write=True,
    )


# --- AI settings ----------------------------------------------------------------------------


@router.get(f"{PREFIX}/settings", summary="Show the AI settings in effect")
def show_settings(request: Request, principal: Admin) -> dict[str, Any]:
    ctx = context_of(request)
    return in_transaction(ctx, lambda s: ai_settings.effective(s, ctx.settings).view())


@router.put(f"{PREFIX}/settings", summary="Change AI settings (absent: kept)")
@router.patch(
    f"{PREFIX}/settings", summary="Change AI settings (absent: kept)", operation_id="patch_settings"
)
def update_settings(request: Request, body: SettingsUpdate, principal: Admin) -> dict[str, Any]:
    ctx = context_of(request)
    changes = body.model_dump(exclude_unset=True)
    actor = actor_of(request, principal)
    return in_transaction(
        ctx, lambda s: ai_settings.update(s, ctx.settings, changes, actor).view(), write=True
    )


# --- audit ----------------------------------------------------------------------------------


def _events(
    request: Request,
    response: Response,
    page: Page,
    filters: AuditFilters,
    *,
    gitlab_shape: bool,
) -> list[dict[str, Any]]:
    ctx = context_of(request)
    after = audit_views.parse_time(filters.created_after, "created_after")
    before = audit_views.parse_time(filters.created_before, "created_before")
    view = audit_views.gitlab_event_view if gitlab_shape else audit_views.event_view

    def work(session: Session) -> list[dict[str, Any]]:
        rows, total = audit_views.list_events(
            session,
            action=filters.event_name,
            author_id=filters.author_id,
            created_after=after,
            created_before=before,
            offset=page.offset,
            limit=page.per_page,
        )
        set_headers(request, response, page, total)
        return [view(row) for row in rows]

    return in_transaction(ctx, work)


EventName = Annotated[
    str | None, Query(description="Only this event, e.g. self_hosted_model_created.")
]
AuthorId = Annotated[int | None, Query(description="Only changes by this user id.")]
After = Annotated[str | None, Query(description="ISO 8601 time; events at or after it.")]
Before = Annotated[str | None, Query(description="ISO 8601 time; events at or before it.")]


@dataclass
class AuditFilters:
    """Query filters shared by both audit-event lists (FastAPI reads them from the signature)."""

    event_name: EventName = None
    author_id: AuthorId = None
    created_after: After = None
    created_before: Before = None


Filters = Annotated[AuditFilters, Depends()]


@router.get(f"{PREFIX}/audit_events", summary="The audit log, newest first")
def list_audit_events(
    request: Request, response: Response, principal: Admin, page: Paging, filters: Filters
) -> list[dict[str, Any]]:
    return _events(request, response, page, filters, gitlab_shape=False)


@audit_router.get("/api/v4/audit_events", summary="Instance audit events (GitLab's shape)")
def gitlab_audit_events(
    request: Request, response: Response, principal: Admin, page: Paging, filters: Filters
) -> list[dict[str, Any]]:
    return _events(request, response, page, filters, gitlab_shape=True)

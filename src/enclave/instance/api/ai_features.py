"""``POST /api/v4/ai/<feature>``: one REST endpoint per non-chat AI feature.

GitLab runs these features (commit messages, merge request summaries and reviews, vulnerability
explanation and resolution, the CLI's git helper, root cause analysis and the chat code tasks)
from its web UI through ``Gitlab::Llm::AiGateway::Client``; Enclave has no web UI, so each gets
a small REST endpoint that takes the text it works on. All of them do the same thing, driven by
:data:`AI_FEATURES`: authenticate the PAT (``api`` or ``ai_features``) → validate the body (422
naming each bad field) → the feature's model (403 when disabled or unassigned; chat code tasks
fall back to ``duo_chat``) → a token for that feature's unit primitive only → ``POST
/v1/prompts/<prompt id>`` on the gateway with GitLab's prompt-registry body::

    {"inputs": {...}, "prompt_version": "^1.0.0" (GitLab 18: "^2.0.0" for the merge request
     and review summaries), "stream": false,
     "model_metadata": {"provider": "openai", "name": <family>, "endpoint", "api_key",
                        "identifier"}}

→ ``{"response": <text>, "feature": <feature>, "model": <model name>}``, or with ``"stream":
true`` the gateway's raw text stream relayed chunk by chunk. When the model fails (gateway 421,
or 503 "Inference failed") the answer is 502 with the model's reason; an unreachable gateway is
502/504 as for code suggestions; other gateway errors are relayed as they came.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from enclave.common import wire
from enclave.common.features import FEATURE_PROMPT_IDS
from enclave.common.http1 import Response as UpstreamResponse
from enclave.common.logging import get_logger
from enclave.instance import gateway_api, limits
from enclave.instance.api.deps import authenticated, context_of
from enclave.instance.api.errors import InstanceAPIError, field_errors
from enclave.instance.api.forwarding import (
    forward_identity,
    gateway_token_counts,
    post_with_fallback,
    resolve_for_request,
)
from enclave.instance.api.middleware import annotate
from enclave.instance.api.relay import (
    caller_message,
    gateway_error,
    gateway_reason,
    json_or_text,
    read_body,
    relay,
    relay_to_caller,
)
from enclave.instance.api.routing import AiTextRoute
from enclave.instance.features import (
    CHAT_SUB_FEATURES,
    FEATURE_UNIT_PRIMITIVES,
    Feature,
    ResolvedModel,
)
from enclave.instance.gateway_client import GatewayUnavailableError, gateway_headers
from enclave.instance.pats import AI_SCOPES, Principal

log = get_logger(__name__)

PREFIX = "/api/v4/ai"
PROMPT_VERSION = "^1.0.0"
# GitLab's Rails hard-codes provider "openai" in model_metadata for self-hosted models.
METADATA_PROVIDER = "openai"
# Statuses with which the gateway says the model (not the gateway) failed: 421 from the prompt
# registry, 503 "Inference failed" from the older endpoints.
MODEL_FAILED_STATUSES = frozenset({421, 503})
MAX_REASON_CHARS = 500

# The body limit is the instance's max_ai_body_bytes (8 MiB by default, AiTextRoute): the
# largest valid body (a 400 000-char diff, or four 100 000-char texts, JSON-escaped) stays
# well under it.
MAX_DIFF_CHARS = 400_000
MAX_TEXT_CHARS = 100_000
MAX_LIST_ITEMS = 100

Diff = Annotated[str, Field(min_length=1, max_length=MAX_DIFF_CHARS)]
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
OptionalText = Annotated[str | None, Field(max_length=MAX_TEXT_CHARS)]
# Tighter limits where the gateway's prompt definitions declare them, so the instance names
# the field (422) instead of relaying the gateway's refusal.
MAX_TITLE_CHARS = 10_000
MAX_MR_TITLE_CHARS = 1_000
MAX_FILE_NAME_CHARS = 4_096
MAX_LANGUAGE_CHARS = 255
MAX_IDENTIFIERS_CHARS = 10_000  # joined with ", "

Title = Annotated[str, Field(min_length=1, max_length=MAX_TITLE_CHARS)]
FileName = Annotated[str, Field(min_length=1, max_length=MAX_FILE_NAME_CHARS)]
Identifiers = Annotated[
    list[Annotated[str, Field(max_length=MAX_IDENTIFIERS_CHARS)]], Field(max_length=MAX_LIST_ITEMS)
]


def _identifiers_fit(identifiers: list[str]) -> list[str]:
    if len(", ".join(identifiers)) > MAX_IDENTIFIERS_CHARS:
        raise ValueError(
            f"the identifiers together must be at most {MAX_IDENTIFIERS_CHARS} characters"
        )
    return identifiers


class FeatureRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients may send more; it is not forwarded

    stream: bool = Field(False, description="Relay the model's text as it is generated.")


class CommitMessageRequest(FeatureRequest):
    diff: Diff = Field(description="The diff to describe (git diff output).")


class MergeRequestSummaryRequest(FeatureRequest):
    diff: Diff
    title: OptionalText = None


class ReviewSummaryRequest(FeatureRequest):
    draft_notes: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]],
        Field(min_length=1, max_length=MAX_LIST_ITEMS),
    ] = Field(description="The review's draft comments, one string each.")


class MergeRequestReviewRequest(FeatureRequest):
    diff: Diff
    title: Annotated[str | None, Field(max_length=MAX_MR_TITLE_CHARS)] = None
    description: OptionalText = None


class ExplainVulnerabilityRequest(FeatureRequest):
    title: Title
    description: Text
    identifiers: Identifiers = Field(default_factory=list, description="CVE, CWE, ... names.")
    file_name: Annotated[str | None, Field(max_length=MAX_FILE_NAME_CHARS)] = None
    code: OptionalText = Field(None, description="The vulnerable code.")

    _identifiers = field_validator("identifiers")(_identifiers_fit)


class ResolveVulnerabilityRequest(FeatureRequest):
    name: Title
    description: Text
    identifiers: Identifiers = Field(default_factory=list)
    file_name: FileName
    source_code: Text = Field(description="The file's source code.")
    vulnerable_code: Text = Field(description="The vulnerable lines in it.")

    _identifiers = field_validator("identifiers")(_identifiers_fit)


class GitCommandRequest(FeatureRequest):
    prompt: Title = Field(description="What to do, e.g. 'undo my last commit'.")


class TroubleshootJobRequest(FeatureRequest):
    job_log: Text = Field(description="The failed CI job's log.")


class CodeTaskRequest(FeatureRequest):
    code: Text = Field(description="The code to work on.")
    file_name: Annotated[str | None, Field(max_length=MAX_FILE_NAME_CHARS)] = None
    language: Annotated[str | None, Field(max_length=MAX_LANGUAGE_CHARS)] = None
    question: OptionalText = Field(None, description="An extra instruction for the model.")


def _joined(items: list[str], separator: str) -> str:
    return separator.join(item.strip() for item in items if item.strip())


def _commit_message(body: CommitMessageRequest) -> dict[str, Any]:
    return {"diff": body.diff}


def _merge_request_summary(body: MergeRequestSummaryRequest) -> dict[str, Any]:
    return {"extracted_diff": body.diff}


def _review_summary(body: ReviewSummaryRequest) -> dict[str, Any]:
    return {"draft_notes_content": _joined(body.draft_notes, "\n")}


def _merge_request_review(body: MergeRequestReviewRequest) -> dict[str, Any]:
    # GitLab 18's gateway requires the two sections (empty: no custom instructions, no files).
    return {
        "diff_lines": body.diff,
        "mr_title": body.title or "",
        "mr_description": body.description or "",
        "custom_instructions_section": "",
        "full_content_section": "",
    }


def _explain_vulnerability(body: ExplainVulnerabilityRequest) -> dict[str, Any]:
    info: list[str] = []
    if body.file_name:
        info.append(f"The vulnerability is in the file {body.file_name}.")
    if body.code:
        info.append(f"The vulnerable code is:\n```\n{body.code}\n```")
    return {
        "title": body.title,
        "vulnerability_description": body.description,
        "identifiers": _joined(body.identifiers, ", "),
        "vulnerability_info": "\n".join(info),
        "language_info": "",  # required by GitLab 18's gateway; the file name says it here
    }


def _resolve_vulnerability(body: ResolveVulnerabilityRequest) -> dict[str, Any]:
    return {
        "name": body.name,
        "vulnerability_description": body.description,
        "identifiers": _joined(body.identifiers, ", "),
        "filename": body.file_name,
        "source_code": body.source_code,
        "vulnerable_code": body.vulnerable_code,
    }


def _git_command(body: GitCommandRequest) -> dict[str, Any]:
    return {"prompt": body.prompt}


def _troubleshoot_job(body: TroubleshootJobRequest) -> dict[str, Any]:
    return {"selected_text": body.job_log, "language_info": ""}


def language_info(language: str | None) -> str:
    """The sentence about the code's language for the chat code-task prompts (GitLab's
    wording; the file name travels in its own input)."""
    return f"The code is written in {language}" if language else ""


def _code_task(body: CodeTaskRequest) -> dict[str, Any]:
    # file_content and file_content_reuse: GitLab 18's gateway requires them (the whole file,
    # and how to reuse it); this endpoint has the selected code only, so both are empty.
    return {
        "selected_text": body.code,
        "file_name": body.file_name or "",
        "file_content": "",
        "file_content_reuse": "",
        "language_info": language_info(body.language),
        "input": body.question or "",
    }


@dataclass(frozen=True)
class AiFeature:
    """One endpoint: its path segment, feature, body model and gateway inputs."""

    path: str
    feature: Feature
    body: type[FeatureRequest]
    inputs: Callable[[Any], dict[str, Any]]
    summary: str

    @property
    def prompt_id(self) -> str:
        return FEATURE_PROMPT_IDS[self.feature.value]

    @property
    def scopes(self) -> frozenset[str]:
        """Only this feature's unit primitive (chat code tasks also need ``duo_chat``)."""
        scopes = {FEATURE_UNIT_PRIMITIVES[self.feature]}
        if self.feature in CHAT_SUB_FEATURES:
            scopes.add(wire.UP_DUO_CHAT)
        return frozenset(scopes)


AI_FEATURES: tuple[AiFeature, ...] = (
    AiFeature(
        "generate_commit_message",
        Feature.GENERATE_COMMIT_MESSAGE,
        CommitMessageRequest,
        _commit_message,
        "Write a commit message for a diff",
    ),
    AiFeature(
        "summarize_new_merge_request",
        Feature.SUMMARIZE_NEW_MERGE_REQUEST,
        MergeRequestSummaryRequest,
        _merge_request_summary,
        "Summarize a new merge request's changes",
    ),
    AiFeature(
        "summarize_review",
        Feature.SUMMARIZE_REVIEW,
        ReviewSummaryRequest,
        _review_summary,
        "Summarize a code review's draft comments",
    ),
    AiFeature(
        "review_merge_request",
        Feature.REVIEW_MERGE_REQUEST,
        MergeRequestReviewRequest,
        _merge_request_review,
        "Review a merge request's diff",
    ),
    AiFeature(
        "explain_vulnerability",
        Feature.EXPLAIN_VULNERABILITY,
        ExplainVulnerabilityRequest,
        _explain_vulnerability,
        "Explain a vulnerability",
    ),
    AiFeature(
        "resolve_vulnerability",
        Feature.RESOLVE_VULNERABILITY,
        ResolveVulnerabilityRequest,
        _resolve_vulnerability,
        "Suggest a fix for a vulnerability",
    ),
    AiFeature(
        "glab_ask_git_command",
        Feature.GLAB_ASK_GIT_COMMAND,
        GitCommandRequest,
        _git_command,
        "Suggest git commands for a task (GitLab Duo for the CLI)",
    ),
    AiFeature(
        "troubleshoot_job",
        Feature.DUO_CHAT_TROUBLESHOOT_JOB,
        TroubleshootJobRequest,
        _troubleshoot_job,
        "Find the root cause of a failed CI job from its log",
    ),
    AiFeature(
        "explain_code",
        Feature.DUO_CHAT_EXPLAIN_CODE,
        CodeTaskRequest,
        _code_task,
        "Explain code",
    ),
    AiFeature(
        "write_tests",
        Feature.DUO_CHAT_WRITE_TESTS,
        CodeTaskRequest,
        _code_task,
        "Write tests for code",
    ),
    AiFeature(
        "refactor_code",
        Feature.DUO_CHAT_REFACTOR_CODE,
        CodeTaskRequest,
        _code_task,
        "Refactor code",
    ),
    AiFeature(
        "fix_code",
        Feature.DUO_CHAT_FIX_CODE,
        CodeTaskRequest,
        _code_task,
        "Fix the problems in code",
    ),
)


def model_metadata(model: ResolvedModel) -> dict[str, Any] | None:
    """GitLab's ``Ai::FeatureSetting#model_metadata_params``, without empty fields; None for
    a vendored feature (GitLab sends no model: the vendored gateway chooses it)."""
    if model.vendored:
        return None
    fields = {
        "provider": METADATA_PROVIDER,
        "name": model.family,
        "endpoint": model.endpoint,
        "api_key": model.api_key,
        "identifier": model.identifier,
    }
    return {key: value for key, value in fields.items() if value is not None}


def prompt_body(
    inputs: dict[str, Any],
    model: ResolvedModel,
    *,
    stream: bool,
    prompt_version: str = PROMPT_VERSION,
) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": inputs, "prompt_version": prompt_version, "stream": stream}
    metadata = model_metadata(model)
    if metadata is not None:
        body["model_metadata"] = metadata
    return body


def prompt_path(prompt_id: str) -> str:
    # The slash in "chat/explain_code" is sent encoded, as GitLab does (chat%2Fexplain_code).
    return "/v1/prompts/" + quote(prompt_id, safe="")


async def forward_feature(
    request: Request, principal: Principal, spec: AiFeature, body: FeatureRequest
) -> Response:
    """What every endpoint in :data:`AI_FEATURES` does (see the module docstring)."""
    ctx = context_of(request)
    await ctx.limits.check(limits.AI_ACTION, principal.user_id)
    annotate(request, feature=spec.feature.value, stream=body.stream)
    model, effective = await resolve_for_request(ctx, spec.feature)
    identity = forward_identity(ctx, request, principal)

    async def send(serving: ResolvedModel) -> UpstreamResponse:
        route = effective.route(serving.vendored)
        minted = ctx.minter.token(spec.scopes, audience=route.audience)
        annotate(request, model=serving.name, signing_kid=minted.kid)
        return await ctx.gateway.post(
            prompt_path(spec.prompt_id),
            orjson.dumps(
                prompt_body(
                    spec.inputs(body),
                    serving,
                    stream=body.stream,
                    prompt_version=gateway_api.prompt_version(ctx, spec.prompt_id),
                )
            ),
            gateway_headers(
                minted.token,
                identity,
                verbose_ai_logs=effective.enabled_instance_verbose_ai_logs,
                version=gateway_api.version_header(ctx),
                unit_primitive=gateway_api.unit_primitive_header(
                    ctx, FEATURE_UNIT_PRIMITIVES[spec.feature]
                ),
            ),
            base_url=route.url,
            timeout_s=effective.ai_gateway_timeout_seconds,
        )

    try:
        upstream, model = await post_with_fallback(ctx, spec.feature, model, send)
    except GatewayUnavailableError as exc:
        raise gateway_error(exc, request, principal) from None
    annotate(request, **gateway_token_counts(upstream.headers))
    if body.stream and upstream.status == 200:
        return await relay(upstream, stream=True)
    if upstream.status in MODEL_FAILED_STATUSES:
        content = await read_body(upstream)
        reason = gateway_reason(content, model.api_key, MAX_REASON_CHARS)
        log.warning("model_failed", feature=spec.feature.value, status=upstream.status)
        precise = (
            f"the model {model.name!r} failed to answer: {reason}. Check the model server "
            "and the model's endpoint, identifier and API key (admin AI settings, "
            "Test connection)."
        )
        raise InstanceAPIError(502, caller_message(request, principal, precise, status=502))
    if upstream.status != 200:
        # The gateway's own refusal (its origin is the gateway, not the instance), with
        # Retry-After so clients can back off; its text only for administrators.
        return await relay_to_caller(
            upstream, stream=False, request=request, principal=principal, secret=model.api_key
        )
    content = await read_body(upstream)
    answer = json_or_text(content)
    if isinstance(answer, dict):  # /v2/prompts shape, should a gateway answer with it
        answer = answer.get("content", answer.get("response"))
    if not isinstance(answer, str):
        raise InstanceAPIError(502, "the AI gateway answered without the model's text")
    return JSONResponse({"response": answer, "feature": spec.feature.value, "model": model.name})


class FieldErrorsRoute(AiTextRoute):
    """Body validation errors as 422 with every bad field named (``errors.field_errors``);
    authentication first and the AI body limit come from :class:`AiTextRoute`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                raise field_errors(exc) from None

        return route


def _endpoint(spec: AiFeature) -> Callable[..., Awaitable[Response]]:
    """A route function whose signature carries ``spec.body`` (so FastAPI validates and
    documents it); the work is :func:`forward_feature`."""

    async def endpoint(request: Request, body: FeatureRequest, principal: Principal) -> Response:
        return await forward_feature(request, principal, spec, body)

    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request
            ),
            inspect.Parameter(
                "body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=spec.body
            ),
            inspect.Parameter(
                "principal",
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=Annotated[Principal, Depends(authenticated(AI_SCOPES))],
            ),
        ],
        return_annotation=Response,
    )
    endpoint.__name__ = f"ai_{spec.path}"
    return endpoint


router = APIRouter(tags=["ai features"], route_class=FieldErrorsRoute)

for _spec in AI_FEATURES:
    router.add_api_route(
        f"{PREFIX}/{_spec.path}",
        _endpoint(_spec),
        methods=["POST"],
        summary=_spec.summary,
        description=f"Feature `{_spec.feature.value}`, gateway prompt `{_spec.prompt_id}`.",
        response_model=None,
    )

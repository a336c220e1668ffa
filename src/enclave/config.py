"""Settings for every role, from defaults, a TOML file and ``ENCLAVE_*`` environment variables.

Precedence (highest first): explicit arguments (CLI flags), environment variables, the config
file, defaults. Environment variables use ``ENCLAVE_<ROLE>__<KEY>`` (for example
``ENCLAVE_GATEWAY__PORT=5053``); the most common ones also have short aliases
(``ENCLAVE_DATA_DIR``, ``ENCLAVE_DATABASE_URL``, ``ENCLAVE_SECRET_KEY``). The config file has the
same keys as TOML tables (``[instance]``, ``[gateway]``, ``[model]``) and is read from
``ENCLAVE_CONFIG`` or ``--config``.

Defaults are safe and local: everything binds to 127.0.0.1 and keeps its state in the data dir.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from enclave.common.features import MODEL_FAMILIES, Feature
from enclave.common.netrules import LOOPBACK_AND_PRIVATE as _LOOPBACK_AND_PRIVATE
from enclave.common.netrules import EgressPolicy, parse_networks


def default_model_threads() -> int:
    """llama.cpp slows 3-10x when it competes with the gateway for every core; leave one free."""
    return max(1, (os.cpu_count() or 2) - 1)


# Request head limits, the same for both servers (enclave.common.http_limits): 16 KiB is
# Node.js's default and twice what one nginx header buffer holds; 100 headers is Apache's
# LimitRequestFields. Clients here send a token and a dozen X-Gitlab-* headers (< 4 KiB).
_MAX_HEADER_BYTES: Any = Field(
    16 * 1024,
    ge=1024,
    le=1024 * 1024,
    description="Largest request head (request line and all headers together), counted while "
    "it is read; over it the server answers 431 and closes the connection.",
)
_MAX_HEADERS: Any = Field(
    100,
    ge=10,
    le=1000,
    description="Most headers in one request; over it → 431 and the connection is closed.",
)


class InstanceSettings(BaseModel):
    """The control plane: users, tokens, model registry, signing keys."""

    host: str = Field("127.0.0.1", description="Address the instance listens on.")
    port: int = Field(8080, ge=1, le=65535, description="Port the instance listens on.")
    external_url: str | None = Field(
        None,
        description="URL clients and the gateway use to reach the instance; it is the `iss` of "
        "every token. Default: http://<host>:<port>.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL (alias ENCLAVE_DATABASE_URL). Default: SQLite file "
        "instance.db in the data dir.",
    )
    database_busy_timeout_s: float = Field(
        5,
        ge=0.05,
        le=120,
        description="SQLite only: how long a write waits for another writer's lock before the "
        'API answers 503 "the instance database is busy" with Retry-After. Writes queue '
        "for the lock (BEGIN IMMEDIATE), so this bounds the wait, not the number of writers.",
    )
    gateway_url: str = Field(
        "http://127.0.0.1:5052", description="Where the instance forwards AI requests."
    )
    gateway_timeout_s: float = Field(
        60, ge=1, le=600, description="How long the instance waits for the gateway."
    )
    vendored_gateway_url: str | None = Field(
        None,
        description="The shared AI gateway that serves features set to vendored (its vendor "
        "models); an administrator's AI setting wins. Unset: vendored cannot be chosen.",
    )
    vendored_gateway_audience: str = Field(
        "enclave-shared-ai-gateway",
        min_length=1,
        max_length=255,
        description="The `aud` of tokens minted for the vendored gateway (its "
        "gateway.audience); self-hosted gateway tokens keep gitlab-ai-gateway.",
    )
    ai_gateway_api: Literal["gitlab18", "gitlab17"] = Field(
        "gitlab18",
        description="Which GitLab generation's AI gateway API the instance speaks: gitlab18 "
        "(chat on /v2/chat/agent, chat tasks on /v1/prompts, current inputs and scopes) or "
        "gitlab17 for gateways from before GitLab 18 (/v1/chat/*, the code_suggestions scope). "
        "Enclave's gateway understands both.",
    )
    token_lifetime_s: int = Field(
        3600, ge=60, le=86400, description="Lifetime of the JWTs the instance mints."
    )
    embedded_model_endpoint: str | None = Field(
        None,
        description="OpenAI-compatible base URL (ending in /v1) of the embedded model; when set, "
        "the instance registers it as the self-hosted model for code completions.",
    )
    default_model_family: str = Field(
        "general",
        description="Model family of the model at embedded_model_endpoint (general, codestral, "
        "mistral, llama3, deepseekcoder, ...): it selects the prompt format.",
    )
    default_model_identifier: str = Field(
        "custom_openai/smollm2",
        description="LiteLLM-style identifier of that model: custom_openai/<served-model-name>.",
    )
    workers: int = Field(1, ge=1, le=64, description="Server worker processes.")
    gateway_routes_secret_file: Path | None = Field(
        None,
        description="File with the shared secret the AI gateway presents (Authorization: "
        "Bearer) to read the feature→model routes at /api/v4/internal/ai/gateway_routes, which "
        "its OpenAI-compatible API serves. Unset: that endpoint answers 404. `enclave up` "
        "generates <data_dir>/keys/gateway-routes.secret (0600) and sets it for both roles.",
    )
    auth_cache_ttl_s: float = Field(
        10.0,
        ge=0,
        le=60,
        description="How long a verified personal access token is served from memory at most "
        "(0: never cached). Revoking, expiring or blocking takes effect at once in the process "
        "that made the change and within cache_poll_s in every other; this bounds it even when "
        "that poll fails.",
    )
    model_cache_ttl_s: float = Field(
        60.0,
        ge=0,
        le=600,
        description="How long a feature's model (with its decrypted API key) and the AI settings "
        "are served from memory at most (0: never cached). Changes take effect at once in the "
        "process that made them and within cache_poll_s in every other.",
    )
    cache_poll_s: float = Field(
        1.0,
        gt=0,
        le=30,
        description="How often each instance process reads the change counters in the database "
        "(in the background, never on a request) to drop cached tokens and models that another "
        "process changed; also how often cached uses are written to last_used_at.",
    )
    revocation_window_s: int = Field(
        7200,
        ge=120,
        le=7 * 86400,
        description="How long a revoked personal access token or a blocked user stays in the "
        "revocation list the AI gateway reads with the feature→model routes, counted from the "
        "PAT's last use (which is when tokens were made from it). Must exceed the lifetime of "
        "the tokens made from a PAT (token_lifetime_s and the gateway's user_token_lifetime_s, "
        "1 h each by default) plus the clock leeway; longer only makes the list bigger. The "
        "gateway picks revocations up within its routes_refresh_s (30 s by default).",
    )
    editor_key_max_days: int = Field(
        90,
        ge=1,
        le=365,
        description="The longest expiry a user may choose for a personal editor key (the static "
        "API key of editor tools that speak OpenAI's API).",
    )
    web_session_idle_s: int = Field(
        3600,
        ge=60,
        le=7 * 86400,
        description="Web UI: a session unused this long is signed out.",
    )
    web_session_max_s: int = Field(
        12 * 3600,
        ge=300,
        le=30 * 86400,
        description="Web UI: a session ends this long after sign-in, however busy.",
    )
    pat_max_lifetime_days: int = Field(
        365,
        ge=1,
        le=3650,
        description="Longest lifetime of a personal access token, in days, and the expiry a "
        "token gets when none is given (GitLab's default: 365). Tokens that exist keep their "
        "expiry.",
    )
    usage_flush_s: float = Field(
        10,
        ge=0.1,
        le=300,
        description="How often the AI usage counted in memory is written to the database (in "
        "one batch, off the request path).",
    )
    usage_max_keys: int = Field(
        20_000,
        ge=100,
        le=1_000_000,
        description="Bound of the in-memory usage buffer, in distinct (minute, user, feature, "
        "model) keys between two flushes; requests past it are dropped and counted in "
        "enclave_instance_usage_dropped_requests_total.",
    )
    model_egress_allow: list[str] = Field(
        default_factory=lambda: [*_LOOPBACK_AND_PRIVATE, "localhost"],
        description="Where model endpoints may point, checked when a model is saved: the same "
        "entries and default as the gateway's model_egress_allow (`enclave up` gives both "
        "roles the same list). A host name that is not listed is resolved at save time and "
        "every address must be allowed; link-local and cloud metadata addresses are always "
        "refused.",
    )
    endpoint_resolve_timeout_s: float = Field(
        3,
        gt=0,
        le=30,
        description="How long saving a model waits for the DNS answer for its endpoint's host.",
    )
    allowed_client_cidrs: list[str] = Field(
        default_factory=lambda: list(_LOOPBACK_AND_PRIVATE),
        description="Client addresses (CIDRs) that may call the instance (IDEs, admins, and the "
        "AI gateway fetching the JWKS); everyone else gets 403. Default: loopback and the "
        'private ranges. ["0.0.0.0/0", "::/0"] allows all; an empty list refuses everyone.',
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Reverse proxies (CIDRs) whose X-Forwarded-For is believed: the client is "
        "the rightmost address in it that is not a trusted proxy. Default: none (the TCP peer "
        "is the client).",
    )
    max_header_bytes: int = _MAX_HEADER_BYTES
    max_headers: int = _MAX_HEADERS
    max_body_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest request body of the admin and account endpoints (users, tokens, "
        "model registry, settings), counted while it is read, chunked or not; over it → 413. "
        "Their largest real bodies are a few KiB (a model with its API key).",
    )
    max_ai_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="Largest request body of the AI endpoints that carry text "
        "(/api/v4/ai/<feature>, /api/v4/chat/completions); over it → 413. Code suggestions "
        "keep GitLab's 600 kB.",
    )

    # Limits (enclave/instance/limits.py): per user, per process (or shared by every replica
    # in Redis with redis_url); 0 turns one off.
    code_suggestions_api_rate_limit: int = Field(
        60,
        ge=0,
        description="Requests a minute per user to POST /api/v4/code_suggestions/completions "
        "(GitLab's code_suggestions_api_rate_limit, default 60); more get 429 with Retry-After.",
    )
    code_suggestions_direct_access_rate_limit: int = Field(
        50,
        ge=0,
        description="Requests a minute per user to POST /api/v4/code_suggestions/direct_access "
        "and to /api/v4/ai/openai/direct_access, each (GitLab's "
        "code_suggestions_direct_access limit: 50).",
    )
    duo_chat_rate_limit: int = Field(
        60,
        ge=0,
        description="Requests per user to POST /api/v4/chat/completions within "
        "duo_chat_rate_limit_window_s. Default 60 a minute: a runaway client is stopped at once "
        "while a day of real use never is (GitLab counts chat against its ai_action limit, 160 "
        "per 8 hours: set 160 and 28800 for that).",
    )
    duo_chat_rate_limit_window_s: float = Field(
        60, gt=0, le=7 * 86400, description="The window of duo_chat_rate_limit."
    )
    ai_action_rate_limit: int = Field(
        60,
        ge=0,
        description="Requests per user to each AI feature endpoint POST /api/v4/ai/<feature> "
        "(explain code, generate tests, ...) within ai_action_rate_limit_window_s. Default 60 "
        "a minute (GitLab's ai_action: 160 per 8 hours).",
    )
    ai_action_rate_limit_window_s: float = Field(
        60, gt=0, le=7 * 86400, description="The window of ai_action_rate_limit."
    )
    failed_auth_max_retry: int = Field(
        30,
        ge=0,
        description="Failed authentications (a wrong, revoked or expired token) from one client "
        "address within failed_auth_find_time_s that ban the address for "
        "failed_auth_ban_time_s: every request with a token from it then gets 429, even with "
        "a valid token, so a guesser learns nothing. 0 turns the ban off. (GitLab's "
        "Rack::Attack: maxretry 10, findtime 60 s, bantime 1 h; Enclave's defaults are "
        "milder so that one person's typos never lock a shared address out for long.)",
    )
    failed_auth_find_time_s: float = Field(
        60, gt=0, le=86400, description="The window of failed_auth_max_retry."
    )
    failed_auth_ban_time_s: float = Field(
        60, gt=0, le=7 * 86400, description="How long an address stays banned."
    )
    failed_auth_exempt_cidrs: list[str] = Field(
        default_factory=list,
        description="Client addresses (CIDRs) never banned for failed authentications. Default: "
        "none, loopback included (deny when unsure). A reverse proxy on the same host belongs in "
        "trusted_proxies, so that its clients are told apart; list it here only if it cannot "
        "send X-Forwarded-For (GitLab's ip_whitelist).",
    )
    rate_limit_max_keys: int = Field(
        100_000,
        ge=100,
        le=10_000_000,
        description="Most users or addresses each limit remembers; beyond it the least recently "
        "seen are forgotten, so a flood of distinct addresses costs bounded memory.",
    )

    @field_validator(
        "allowed_client_cidrs", "trusted_proxies", "failed_auth_exempt_cidrs", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("allowed_client_cidrs", "trusted_proxies", "failed_auth_exempt_cidrs")
    @classmethod
    def _networks(cls, value: list[str], info: ValidationInfo) -> list[str]:
        parse_networks(value, str(info.field_name))
        return value

    @field_validator("model_egress_allow", mode="before")
    @classmethod
    def _egress_comma_separated(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("model_egress_allow")
    @classmethod
    def _egress_entries(cls, value: list[str]) -> list[str]:
        EgressPolicy.parse(value)
        return value

    @field_validator("vendored_gateway_url")
    @classmethod
    def _vendored_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    def issuer(self) -> str:
        return (self.external_url or f"http://{self.host}:{self.port}").rstrip("/")


# The `iss` (and `aud`) of the user tokens the gateway signs itself (GitLab's service name).
SELF_SIGNED_ISSUER = "gitlab-ai-gateway"


class TrustedIssuer(BaseModel):
    """One instance a shared gateway trusts (an entry of ``gateway.trusted_issuers``)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        description="The instance's external URL, exactly as in the `iss` of its tokens; its "
        "keys are found through <url>/.well-known/openid-configuration."
    )
    jwks_url: str | None = Field(
        None, description="Fetch this instance's keys from this JWKS URL instead."
    )
    jwks_file: Path | None = Field(
        None, description="Read this instance's keys from this static JWKS file instead."
    )

    allowed_features: list[str] | None = Field(
        None,
        description="Shared gateway: the features (code_completions, duo_chat, ...) this "
        "instance may use here; others answer 403. Default: all.",
    )
    rate_limit_rps: float | None = Field(
        None,
        ge=0,
        description="This instance's own requests per second (over it → 429), instead of "
        "rate_limit_per_instance_rps; 0 turns its limit off.",
    )
    rate_limit_burst: int | None = Field(
        None, ge=1, description="This instance's burst, instead of rate_limit_per_instance_burst."
    )
    allow_self_hosted_models: bool | None = Field(
        None,
        description="Whether requests from this instance may name their own model (endpoint, "
        "key) instead of the gateway's vendor default. Default: no when the gateway has "
        "vendor_models (shared mode), yes otherwise.",
    )

    @field_validator("url", "jwks_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("allowed_features")
    @classmethod
    def _known_features(cls, value: list[str] | None) -> list[str] | None:
        known = {feature.value for feature in Feature}
        for name in value or []:
            if name not in known:
                raise ValueError(f"unknown feature {name!r}; features: {', '.join(sorted(known))}")
        return value


class VendorModel(BaseModel):
    """The model a shared gateway uses for one feature when the request names none (vendored
    features), with the vendor credentials the gateway holds (``gateway.vendor_models``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Literal["anthropic", "openai", "azure", "bedrock", "vertex_ai"] = Field(
        description="Which provider module calls it."
    )
    model: str = Field(
        min_length=1, max_length=255, description="The vendor's model id (claude-3-5-sonnet-...)."
    )
    family: str = Field(
        "claude_3",
        description="Prompt family for the gateway's prompt registry (claude_3, gpt, general, "
        "...).",
    )
    endpoint: str | None = Field(
        None,
        description="API base; default the vendor's public API (Anthropic) or the gateway's "
        "Bedrock/Vertex settings. Must pass model_egress_allow.",
    )
    api_key_file: Path | None = Field(
        None, description="File holding the vendor API key (read at start, never logged)."
    )
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Environment variable holding the vendor API key (read at start).",
    )
    max_tokens: int | None = Field(None, ge=1, le=200_000, description="Overrides the prompt's.")
    temperature: float | None = Field(None, ge=0, le=2, description="Overrides the prompt's.")

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        if value not in MODEL_FAMILIES:
            raise ValueError(
                f"unknown family {value!r}; families: {', '.join(sorted(MODEL_FAMILIES))}"
            )
        return value

    def api_key(self) -> str | None:
        """The key from its file or variable, read now; never from a request."""
        if self.api_key_file is not None:
            return self.api_key_file.read_text().strip() or None
        if self.api_key_env is not None:
            return os.environ.get(self.api_key_env, "").strip() or None
        return None


class ModelTLS(BaseModel):
    """TLS towards one model endpoint (``gateway.model_tls``): its CA bundle and client
    certificate. Verification stays on; what is not set follows the gateway-wide settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_bundle: Path | None = Field(
        None, description="PEM file of the CAs this endpoint's certificate is checked against."
    )
    client_cert: Path | None = Field(
        None, description="PEM client certificate presented to this endpoint (mutual TLS)."
    )
    client_key: Path | None = Field(None, description="PEM private key of client_cert.")


def tls_origin(url: str) -> str:
    """``https://host:port`` of ``url`` (port 443 spelt out), the key of ``model_tls``."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme.lower()}://{host}:{parts.port or 443}"


class GatewaySettings(BaseModel):
    """The data plane: token verification, prompts, model calls.

    Lists come as JSON in environment variables, e.g.
    ``ENCLAVE_GATEWAY__ALLOWED_CLIENT_CIDRS='["10.0.0.0/8"]'`` or
    ``ENCLAVE_GATEWAY__TRUSTED_ISSUERS='[{"url": "https://gitlab.a.example"}]'``.
    """

    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(5052, ge=1, le=65535, description="Port the gateway listens on.")
    issuer_url: str = Field(
        "http://127.0.0.1:8080",
        description="The instance this gateway trusts; its keys are found through "
        "<issuer_url>/.well-known/openid-configuration.",
    )
    jwks_url: str | None = Field(
        None, description="Fetch keys from this JWKS URL instead of OIDC discovery."
    )
    jwks_file: Path | None = Field(
        None, description="Read keys from this static JWKS file (fully offline setups)."
    )
    jwks_cache_ttl_s: float = Field(86400, ge=10, description="How long fetched keys are fresh.")
    jwks_stale_s: float = Field(
        6 * 3600,
        ge=0,
        description="How long the last good keys keep serving when the issuer "
        "is down after they went stale.",
    )
    jwks_refresh_cooldown_s: float = Field(
        30, ge=0, description="Minimum time between two key fetches caused by unknown key ids."
    )
    jwks_fetch_timeout_s: float = Field(5, gt=0, le=60, description="Timeout of one key fetch.")
    leeway_s: int = Field(30, ge=0, le=300, description="Clock leeway for exp/nbf/iat.")
    model_timeout_s: float = Field(60, gt=0, le=600, description="Timeout of one model call.")
    model_connect_timeout_s: float = Field(
        10, gt=0, le=600, description="Timeout of connecting to a model endpoint."
    )
    model_retries: int = Field(
        2,
        ge=0,
        le=5,
        description="Retries of one model call when it is safe: the connection failed, or the "
        "model answered 429 (with no Retry-After, or a short one) or 503 before any answer.",
    )
    model_retry_backoff_s: float = Field(
        0.25, ge=0, le=10, description="Base of the jittered exponential back-off of retries."
    )
    model_retry_max_wait_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="The longest wait before a retry; a 429 asking for longer is passed "
        "through with its Retry-After instead.",
    )
    model_breaker_failures: int = Field(
        5,
        ge=0,
        le=1000,
        description="Failures in a row (unreachable, timed out, 5xx) after which calls to that "
        "model endpoint fail at once for model_breaker_cooldown_s; 0 disables the breaker.",
    )
    model_breaker_cooldown_s: float = Field(
        10, gt=0, le=600, description="How long an endpoint's open circuit refuses calls."
    )
    model_ca_bundle: Path | None = Field(
        None,
        description="PEM file of the CAs that model endpoints' TLS certificates are checked "
        "against (default: the system CA store).",
    )
    model_client_cert: Path | None = Field(
        None,
        description="PEM client certificate the gateway presents to model endpoints that "
        "require mutual TLS (with model_client_key, unless the file holds the key too).",
    )
    model_client_key: Path | None = Field(None, description="PEM private key of model_client_cert.")
    model_tls: dict[str, ModelTLS] = Field(
        default_factory=dict,
        description="Per model endpoint TLS, keyed by the endpoint's https origin "
        '(JSON: {"https://vllm.internal:8443": {"ca_bundle": "/etc/enclave/vllm-ca.pem", '
        '"client_cert": "...", "client_key": "..."}}); wins over model_ca_bundle and '
        "model_client_cert for that endpoint. Files stay on the gateway: nothing TLS-related "
        "travels in requests.",
    )
    azure_api_version: str = Field(
        "2024-10-21",
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$",
        description="The api-version query parameter of Azure OpenAI calls.",
    )
    bedrock_region: str | None = Field(
        None,
        pattern=r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$",
        description="AWS region of Amazon Bedrock models registered without an endpoint "
        "(default: AWS_REGION / AWS_DEFAULT_REGION, or the region of an ARN identifier).",
    )
    bedrock_endpoint: str | None = Field(
        None,
        description="Bedrock runtime URL to call instead of "
        "https://bedrock-runtime.<region>.amazonaws.com (a VPC interface endpoint).",
    )
    vertex_project: str | None = Field(
        None, description="Google Cloud project of Vertex AI models."
    )
    vertex_location: str = Field(
        "us-central1",
        pattern=r"^[a-z0-9-]+$",
        description="Vertex AI location (region), e.g. us-east5 or europe-west1.",
    )
    vertex_endpoint: str | None = Field(
        None,
        description="Vertex AI API base to call instead of "
        "https://<location>-aiplatform.googleapis.com (Private Service Connect, a proxy).",
    )
    vertex_token_url: str | None = Field(
        None,
        description="OAuth token endpoint that turns a Vertex model's service-account key "
        "into an access token. Never defaulted: set https://oauth2.googleapis.com/token to use "
        "Google's, or your own endpoint when air-gapped.",
    )
    workers: int = Field(1, ge=1, le=64, description="Server worker processes.")
    gateway_routes_secret_file: Path | None = Field(
        None,
        description="File with the secret shared with the instance (its "
        "gateway_routes_secret_file); with it the gateway keeps the instance's feature→model "
        "routes in memory and serves the OpenAI-compatible API (/v1/models, "
        "/v1/chat/completions, /v1/completions) and refuses the tokens of revoked PATs and "
        "blocked users. Unset: that API answers 503 and direct-access user tokens stay valid "
        "until they expire. Single-instance mode only (no trusted_issuers).",
    )
    embedded_model_endpoint: str | None = Field(
        None,
        description="Base URL (ending in /v1) of the embedded model; calls to it get shorter "
        "answers per feature (enclave.gateway.output_caps) so that the small CPU model answers "
        "within the default timeout. `enclave up` sets it.",
    )
    usage_push_s: float = Field(
        10,
        ge=0.1,
        le=300,
        description="How often the usage of the direct paths (direct access, the "
        "OpenAI-compatible API), counted in memory, is pushed to the instance "
        "(POST /api/v4/internal/ai/usage with the routes secret). Needs "
        "gateway_routes_secret_file.",
    )
    routes_refresh_s: float = Field(
        30,
        ge=0.2,
        le=3600,
        description="How often the feature→model routes and the revocations that come with "
        "them (revoked personal access tokens, blocked users) are re-read: a revocation "
        "refuses the OpenAI-API and direct-access user tokens made for that PAT or user within "
        "this time (plus one fetch, routes_fetch_timeout_s).",
    )
    routes_stale_s: float = Field(
        300,
        ge=0,
        description="How long the last good routes keep serving when the instance cannot be "
        "reached; after that the OpenAI-compatible API, and direct-access user tokens (whose "
        "revocation can no longer be checked), answer 503.",
    )
    routes_fetch_timeout_s: float = Field(
        5, gt=0, le=60, description="Timeout of one routes fetch."
    )
    trusted_issuers: list[TrustedIssuer] = Field(
        default_factory=list,
        description="Shared-gateway mode: the instances this gateway trusts, each with `url` "
        "and optionally `jwks_url` or `jwks_file`. When set, issuer_url is trusted too only if "
        "it is set explicitly; when empty, issuer_url (with jwks_url / jwks_file) is the one "
        "trusted instance.",
    )
    vendor_models: dict[str, VendorModel] = Field(
        default_factory=dict,
        description="Shared-gateway mode: per feature (code_completions, duo_chat, ...), the "
        "vendor model used for requests that name no model (an instance's vendored features), "
        'with its credentials held here (JSON: {"duo_chat": {"provider": "anthropic", "model": '
        '"claude-3-5-sonnet-20241022", "api_key_file": "/etc/enclave/anthropic.key"}}). '
        "Chat sub-features without an entry use duo_chat's. When set, instances may not name "
        "their own models unless their trusted_issuers entry sets allow_self_hosted_models.",
    )
    audience: str = Field(
        "gitlab-ai-gateway",
        min_length=1,
        max_length=255,
        description="The `aud` tokens must carry. A shared gateway should use its own (the "
        "instances' vendored_gateway_audience), so that tokens minted for it are worthless at "
        "the instances' self-hosted gateways and the other way round.",
    )
    config_reload_s: float = Field(
        2,
        ge=0,
        le=3600,
        description="How often the config file (ENCLAVE_CONFIG / --config) is checked for "
        "changes to trusted_issuers; a change applies within this time, and an instance "
        "removed from the list is refused from then on, tokens already minted included. "
        "0 turns it off (restart to apply).",
    )
    allowed_client_cidrs: list[str] = Field(
        default_factory=lambda: list(_LOOPBACK_AND_PRIVATE),
        description="Client addresses (CIDRs) that may call the gateway; everyone else gets "
        '403. Default: loopback and the private ranges. ["0.0.0.0/0", "::/0"] allows all; '
        "an empty list refuses everyone.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Reverse proxies (CIDRs) whose X-Forwarded-For is believed: the client is "
        "the rightmost address in it that is not a trusted proxy. Default: none (the TCP peer "
        "is the client).",
    )
    model_egress_allow: list[str] = Field(
        default_factory=lambda: [*_LOOPBACK_AND_PRIVATE, "localhost"],
        description="Where model endpoints may point: CIDRs or addresses (10.0.0.0/8, "
        "10.1.2.3:8000, [fd12::5]:8000), host names (vllm.internal, vllm.internal:8000) or "
        "wildcard domains (*.models.internal). A host name that is not listed is resolved and "
        "every address must be allowed. Link-local and cloud metadata addresses are always "
        "refused. Default: loopback and the private ranges; an empty list refuses every "
        "model endpoint.",
    )
    self_signing_key_file: Path | None = Field(
        None,
        description="RSA private key (PEM) that signs the user tokens of "
        "/v1/code/user_access_token. Default: <data_dir>/keys/gateway-signing.pem, generated "
        "(0600) on first start. Replicas behind one load balancer must share this file.",
    )
    user_token_lifetime_s: int = Field(
        3600, ge=60, le=86400, description="Lifetime of the user tokens the gateway signs."
    )
    rate_limit_per_instance_rps: float = Field(
        1000,
        ge=0,
        description="Requests per second each instance (issuer, instance id) may send to the AI "
        "endpoints, per worker process (for all replicas together with redis_url); over it → "
        "429 with Retry-After. 0 turns it off.",
    )
    rate_limit_per_instance_burst: int = Field(
        2000, ge=1, description="Requests an instance may send at once above its rate."
    )
    rate_limit_per_user_rpm: float = Field(
        600,
        ge=0,
        description="Requests per minute each user (instance id, X-Gitlab-Global-User-Id) may "
        "send to the AI endpoints, per worker process (for all replicas together with "
        "redis_url); over it → 429. 0 turns it off.",
    )
    rate_limit_per_user_burst: int = Field(
        100, ge=1, description="Requests a user may send at once above their rate."
    )
    max_header_bytes: int = _MAX_HEADER_BYTES
    max_headers: int = _MAX_HEADERS
    rate_limit_max_buckets: int = Field(
        100_000,
        ge=1,
        description="Most instances / users tracked per limit; past it the oldest is forgotten.",
    )

    @field_validator("allowed_client_cidrs", "trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("allowed_client_cidrs", "trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str], info: ValidationInfo) -> list[str]:
        parse_networks(value, str(info.field_name))
        return value

    @field_validator("model_egress_allow", mode="before")
    @classmethod
    def _egress_comma_separated(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("model_egress_allow")
    @classmethod
    def _egress_entries(cls, value: list[str]) -> list[str]:
        EgressPolicy.parse(value)
        return value

    @field_validator("vendor_models")
    @classmethod
    def _vendor_features(cls, value: dict[str, VendorModel]) -> dict[str, VendorModel]:
        known = {feature.value for feature in Feature}
        for name in value:
            if name not in known:
                raise ValueError(
                    f"vendor_models: unknown feature {name!r}; features: {', '.join(sorted(known))}"
                )
        return value

    @property
    def shared_mode(self) -> bool:
        """A gateway that serves vendor models to its instances (``vendor_models`` set)."""
        return bool(self.vendor_models)

    @field_validator("model_tls")
    @classmethod
    def _tls_origins(cls, value: dict[str, ModelTLS]) -> dict[str, ModelTLS]:
        """Keys are https origins (no path, query or credentials), normalised to host:port."""
        normalised: dict[str, ModelTLS] = {}
        for key, tls in value.items():
            try:
                parts = urlsplit(key.strip())
                parts.port  # noqa: B018  (raises on a bad port)
            except ValueError:
                raise ValueError(f"model_tls: {key!r} is not a URL") from None
            if (
                parts.scheme.lower() != "https"
                or not parts.hostname
                or parts.path.strip("/")
                or parts.query
                or parts.fragment
                or parts.username is not None
            ):
                raise ValueError(
                    f"model_tls: {key!r} must be an https origin such as https://vllm.internal:8443"
                )
            if tls.client_key is not None and tls.client_cert is None:
                raise ValueError(f"model_tls[{key!r}]: client_key needs client_cert")
            normalised[tls_origin(key)] = tls
        return normalised

    def trusted_issuer_list(self) -> list[TrustedIssuer]:
        """The instances this gateway trusts, in order, without duplicates."""
        issuers = list(self.trusted_issuers)
        if not issuers or "issuer_url" in self.model_fields_set:
            issuers.insert(
                0,
                TrustedIssuer(
                    url=self.issuer_url, jwks_url=self.jwks_url, jwks_file=self.jwks_file
                ),
            )
        unique: dict[str, TrustedIssuer] = {}
        for issuer in issuers:
            unique.setdefault(issuer.url.rstrip("/"), issuer)
        return list(unique.values())


def _split_list(value: Any) -> Any:
    """A plain string (config file or a non-JSON env value) as a comma-separated list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ModelSettings(BaseModel):
    """The embedded default model: llama.cpp's OpenAI-compatible server."""

    host: str = Field("127.0.0.1", description="Address the model server listens on.")
    port: int = Field(0, ge=0, le=65535, description="Port; 0 picks a free loopback port.")
    gguf: Path | None = Field(
        None, description="GGUF file to serve. Default: the bundled SmolLM2-135M-Instruct."
    )
    served_name: str = Field("smollm2", description="Model id the server answers to.")
    threads: int = Field(
        default_factory=default_model_threads, ge=1, description="CPU threads for inference."
    )
    ctx_size: int = Field(4096, ge=256, description="Context window in tokens.")
    parallel: int = Field(1, ge=1, le=64, description="Requests decoded in parallel.")


class EnclaveSettings(BaseSettings):
    """All settings. One instance of this is built per process at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="ENCLAVE_",
        env_nested_delimiter="__",
        extra="forbid",
        populate_by_name=True,
    )

    data_dir: Path = Field(
        Path("data"),
        description="Where state lives: SQLite database, signing keys, saved tokens.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Key (base64, 32 bytes) that encrypts model API keys at rest. Default: a "
        "generated 0600 key file in the data dir.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    redis_url: SecretStr | None = Field(
        None,
        description="Redis URL (redis://[:password@]host:port/db, rediss:// for TLS; env "
        "ENCLAVE_REDIS_URL) that every replica shares: with it the rate limits (instance per "
        "user, failed-auth bans; gateway per instance and per user) are counted in Redis by "
        "atomic scripts, so N replicas enforce one limit instead of N. Unset: each process "
        "counts its own share. Secret: it may hold a password and is never logged.",
    )
    redis_failure_mode: Literal["open", "closed"] = Field(
        "closed",
        description="What a limit does while Redis cannot be reached (refused, or no answer "
        "within redis_timeout_s): closed (default; deny when unsure) answers 503 with "
        "Retry-After, so a Redis outage cannot become an unlimited flood or an unbanned token "
        "guesser; open lets requests through unlimited, trading that for availability. Either "
        "way the change is logged once per transition and counted in /metrics.",
    )
    redis_timeout_s: float = Field(
        0.1,
        ge=0.01,
        le=2,
        description="How long one Redis call may take (connect or answer) before it counts as "
        "a failure; after a failure Redis is not tried again for redis_retry_s, so an outage "
        "costs each request at most this, never a hang.",
    )
    redis_retry_s: float = Field(
        1, ge=0.1, le=60, description="How long after a Redis failure the next call is tried."
    )

    instance: InstanceSettings = Field(default_factory=InstanceSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    model: ModelSettings = Field(default_factory=ModelSettings)

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, _ShortAliases(settings_cls)]
        sources.append(env_settings)
        stack_values = _stack_values.get()
        if stack_values:
            # Where `enclave up` put the roles (enclave.stack): below flags and ENCLAVE_*, above
            # the config file, whose ports `up` may have overridden.
            sources.append(InitSettingsSource(settings_cls, init_kwargs=stack_values))
        config_file = _explicit_config_file.get() or os.environ.get("ENCLAVE_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    # Derived paths -------------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        return self.instance.database_url or f"sqlite:///{self.data_dir / 'instance.db'}"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def secret_key_file(self) -> Path:
        return self.keys_dir / "secret.key"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin-token.txt"

    @property
    def admin_password_file(self) -> Path:
        return self.data_dir / "admin-password.txt"

    @property
    def gateway_routes_secret_default_file(self) -> Path:
        """Where ``enclave up`` keeps the instance↔gateway routes secret."""
        return self.keys_dir / "gateway-routes.secret"

    @property
    def model_dir(self) -> Path:
        return self.data_dir / "model"

    @property
    def model_api_key_file(self) -> Path:
        return self.model_dir / "api-key"


class _ShortAliases(PydanticBaseSettingsSource):
    """Short environment aliases for the settings people change most."""

    _ALIASES: ClassVar[dict[str, tuple[str, ...]]] = {
        "ENCLAVE_DATABASE_URL": ("instance", "database_url"),
        "ENCLAVE_GATEWAY_URL": ("instance", "gateway_url"),
        "ENCLAVE_ISSUER_URL": ("gateway", "issuer_url"),
    }

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for env_name, (section, key) in self._ALIASES.items():
            value = os.environ.get(env_name)
            if value:
                found.setdefault(section, {})[key] = value
        return found


# Set only while ``load_settings`` builds settings from an explicit file, so that loading never
# changes the process environment.
_explicit_config_file: ContextVar[str | None] = ContextVar("enclave_config_file", default=None)


# Set only while ``load_settings(stack=True)`` builds settings: the running stack's addresses.
_stack_values: ContextVar[dict[str, Any] | None] = ContextVar("enclave_stack", default=None)


def load_settings(
    config_file: Path | None = None, *, stack: bool = False, **overrides: Any
) -> EnclaveSettings:
    """Build settings; ``config_file`` wins over ``ENCLAVE_CONFIG``.

    ``stack=True`` (the commands that talk to a running stack: doctor, models test, status,
    ...): the addresses ``enclave up`` recorded in the data dir apply too, under flags and
    ``ENCLAVE_*`` variables (see :mod:`enclave.stack`).
    """
    settings = _load(config_file, overrides)
    if not stack:
        return settings
    from enclave.stack import read_stack

    record = read_stack(settings.data_dir)
    if record is None or not record.supervisor_alive():
        # No stack runs from this data dir (stopped, or killed): the roles may run apart now.
        return settings
    reset = _stack_values.set(record.settings())
    try:
        return _load(config_file, overrides)
    finally:
        _stack_values.reset(reset)


def _load(config_file: Path | None, overrides: dict[str, Any]) -> EnclaveSettings:
    if config_file is None:
        return EnclaveSettings(**overrides)
    if not config_file.is_file():
        raise FileNotFoundError(f"config file {config_file} does not exist")
    reset = _explicit_config_file.set(str(config_file))
    try:
        return EnclaveSettings(**overrides)
    finally:
        _explicit_config_file.reset(reset)

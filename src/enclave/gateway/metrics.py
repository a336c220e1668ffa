"""Prometheus metrics of the gateway, served as text at ``GET /metrics``.

Each app has its own :class:`~prometheus_client.CollectorRegistry` (tests build many apps in
one process). The hot path never creates metric objects: label children are created when the
app is built (routes, model families, issuers, scopes, auth failure reasons) or, for
``(route, status)`` pairs, once on first use and then looked up in a plain dict. In one process
the values are plain floats without locks (:mod:`enclave.gateway.plain_metrics`); rendering is
prometheus-client's.

``/metrics`` needs no token (as in GitLab's gateway) but is subject to the client address
allow-list like every other path.

Several workers (``gateway.workers > 1``): each worker process has its own numbers, and a
scrape sees whichever worker answered it, unless ``PROMETHEUS_MULTIPROC_DIR`` names an empty,
writable directory (set before the workers start, cleared between runs): then every worker
writes its numbers there and ``/metrics`` answers with all of them summed
(prometheus-client's multiprocess mode; the in-flight gauge is summed over live workers).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response

from enclave.gateway.auth import verify
from enclave.gateway.models.base import (
    ModelError,
    ModelRequest,
    ModelResult,
    TextModelClient,
    TextStream,
    ToolCallDelta,
    Usage,
)
from enclave.gateway.plain_metrics import metric_types
from enclave.gateway.tenant_usage import USAGE_KEY
from enclave.gateway.usage import add_tokens

if TYPE_CHECKING:
    from enclave.gateway.runtime import Gateway

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED: Final = "<unmatched>"
OTHER: Final = "other"

# Request latencies are ms-scale (the gateway itself adds ~0.5 ms); model calls take seconds.
REQUEST_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
MODEL_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# Authentication failure reasons (the label stays bounded: never the raw message).
_AUTH_REASONS: Final[dict[str, str]] = {
    verify.NO_AUTH_HEADER: "missing_authorization",
    verify.INVALID_AUTH_HEADER: "invalid_authorization",
    verify.INVALID_AUTH_TYPE: "invalid_auth_type",
    verify.TOKEN_TOO_LARGE: "token_too_large",
    verify.TOKEN_EXPIRED: "token_expired",
    verify.TOKEN_NOT_YET_VALID: "token_not_yet_valid",
    verify.WRONG_AUDIENCE: "wrong_audience",
    verify.UNKNOWN_KEY: "unknown_key",
    verify.AMBIGUOUS_KEY: "unknown_key",
    verify.INVALID_SIGNATURE: "invalid_signature",
    verify.ALGORITHM_NOT_ALLOWED: "algorithm_not_allowed",
    verify.ALGORITHM_MISMATCH: "algorithm_mismatch",
}
AUTH_REASONS: Final = (
    *sorted(set(_AUTH_REASONS.values())),
    "header_mismatch",
    "untrusted_issuer",
    "issuer_unavailable",
    "token_revoked",
    "revocations_unavailable",
    "invalid_token",
)
RATE_LIMIT_SCOPES: Final = ("instance", "user")


def auth_failure_reason(error: verify.AuthError) -> str:
    """A short, bounded reason for an authentication failure."""
    reason = _AUTH_REASONS.get(error.message)
    if reason is not None:
        return reason
    if error.code == "token_revoked":
        return error.code
    if error.code == "routes_unavailable":  # the revocation state is too old to trust
        return "revocations_unavailable"
    if error.status == 503:
        return "issuer_unavailable"
    if error.message.startswith("Header mismatch"):
        return "header_mismatch"
    if "untrusted issuer" in error.message:
        return "untrusted_issuer"
    return "invalid_token"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class GatewayMetrics:
    """The gateway's metrics in one registry, with pre-created label children."""

    def __init__(
        self,
        routes: Iterable[str],
        families: Iterable[str],
        issuers: Iterable[str],
    ) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=False)
        self.multiprocess = multiprocess_dir() is not None
        # Plain-float values in one process, prometheus-client's shared files across workers.
        types = metric_types(self.multiprocess)
        self.requests = types.counter(
            "enclave_gateway_requests",
            "HTTP requests answered, by route template and status.",
            ["route", "status"],
            registry=registry,
        )
        self.request_duration = types.histogram(
            "enclave_gateway_request_duration_seconds",
            "Time to answer an HTTP request (streams: until the last byte), by route template.",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.model_requests = types.counter(
            "enclave_gateway_model_requests",
            "Model calls, by model family and outcome (success, error).",
            ["family", "outcome"],
            registry=registry,
        )
        self.model_duration = types.histogram(
            "enclave_gateway_model_request_duration_seconds",
            "Duration of model calls (streams: until the stream ends), by model family.",
            ["family"],
            buckets=MODEL_BUCKETS,
            registry=registry,
        )
        self.model_inflight = types.gauge(
            "enclave_gateway_model_inflight",
            "Model calls in progress.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.tokens = types.counter(
            "enclave_gateway_tokens",
            "Tokens the model servers reported, by direction (input, output).",
            ["direction"],
            registry=registry,
        )
        self.auth_failures = types.counter(
            "enclave_gateway_auth_failures",
            "Requests refused by authentication, by reason.",
            ["reason"],
            registry=registry,
        )
        self.jwks_fetches = types.counter(
            "enclave_gateway_jwks_fetches",
            "Fetches of the issuers' signing keys, by issuer and outcome (success, failure).",
            ["issuer", "outcome"],
            registry=registry,
        )
        self.token_cache_hits = types.counter(
            "enclave_gateway_token_cache_hits",
            "Tokens found in the verified-token cache.",
            registry=registry,
        )
        self.token_cache_misses = types.counter(
            "enclave_gateway_token_cache_misses",
            "Tokens not in the verified-token cache (verified in full).",
            registry=registry,
        )
        self.rate_limited = types.counter(
            "enclave_gateway_rate_limited",
            "Requests refused by the rate limiter, by scope (instance, user).",
            ["scope"],
            registry=registry,
        )

        # Shared-gateway usage per tenant (instance = the issuer URL) and feature: children are
        # created on first use, bounded by trusted instances x features.
        self.tenant_requests = types.counter(
            "enclave_gateway_instance_requests",
            "Requests served per trusted instance and feature (after authentication).",
            ["instance", "feature"],
            registry=registry,
        )
        self.tenant_tokens = types.counter(
            "enclave_gateway_instance_tokens",
            "Model tokens per trusted instance, feature and direction (input, output).",
            ["instance", "feature", "direction"],
            registry=registry,
        )
        self.tenant_rate_limited = types.counter(
            "enclave_gateway_instance_rate_limited",
            "Requests refused by a trusted instance's own rate limit.",
            ["instance"],
            registry=registry,
        )
        self.tenant_limit_rps = types.gauge(
            "enclave_gateway_instance_rate_limit_rps",
            "Each trusted instance's request rate limit (requests per second; 0: off).",
            ["instance"],
            registry=registry,
            multiprocess_mode="max",
        )

        self._tenant_children: dict[tuple[str, str], Counter] = {}
        # (instance, feature, direction) -> its token counter.
        self._tenant_token_children: dict[tuple[str, str, str], Counter] = {}

        # Pre-created children: the hot path only looks them up.
        self._route_duration = {
            route: self.request_duration.labels(route) for route in (*routes, UNMATCHED)
        }
        self._route_status: dict[tuple[str, int], Counter] = {}
        self._families = {
            family: (
                self.model_requests.labels(family, "success"),
                self.model_requests.labels(family, "error"),
                self.model_duration.labels(family),
            )
            for family in (*families, OTHER)
        }
        self.input_tokens = self.tokens.labels("input")
        self.output_tokens = self.tokens.labels("output")
        self._auth_reasons = {reason: self.auth_failures.labels(reason) for reason in AUTH_REASONS}
        self._jwks = {
            issuer: (
                self.jwks_fetches.labels(issuer, "success"),
                self.jwks_fetches.labels(issuer, "failure"),
            )
            for issuer in issuers
        }
        self.rate_limited_scopes = {
            scope: self.rate_limited.labels(scope) for scope in RATE_LIMIT_SCOPES
        }

    # -- recording --------------------------------------------------------------------------

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        duration = self._route_duration.get(route)
        if duration is None:
            route = UNMATCHED
            duration = self._route_duration[route]
        duration.observe(seconds)
        counter = self._route_status.get((route, status))
        if counter is None:
            counter = self._route_status[(route, status)] = self.requests.labels(route, str(status))
        counter.inc()

    def family(self, name: str) -> tuple[Counter, Counter, Histogram]:
        children = self._families.get(name)
        return children if children is not None else self._families[OTHER]

    def tenant_request(self, instance: str, feature: str) -> None:
        # A dict lookup on the hot path instead of labels() (a lock and a tuple each time).
        child = self._tenant_children.get((instance, feature))
        if child is None:
            child = self._tenant_children[(instance, feature)] = self.tenant_requests.labels(
                instance, feature
            )
        child.inc()

    def tenant_usage(self, key: tuple[str, str] | None, usage: Usage | None) -> None:
        """Count a model call's tokens for the tenant and feature that asked (if any)."""
        if key is None or usage is None:
            return
        if usage.input_tokens:
            self._tenant_tokens_child(key, "input").inc(usage.input_tokens)
        if usage.output_tokens:
            self._tenant_tokens_child(key, "output").inc(usage.output_tokens)

    def _tenant_tokens_child(self, key: tuple[str, str], direction: str) -> Counter:
        # A dict lookup on the hot path instead of labels() (a lock and a tuple each time);
        # created on first use, so /metrics shows the same series as before.
        child = self._tenant_token_children.get((*key, direction))
        if child is None:
            child = self._tenant_token_children[(*key, direction)] = self.tenant_tokens.labels(
                *key, direction
            )
        return child

    def tenant_limited(self, instance: str) -> None:
        self.tenant_rate_limited.labels(instance).inc()

    def tenant_limit(self, instance: str, rps: float) -> None:
        self.tenant_limit_rps.labels(instance).set(rps)

    def auth_failure(self, error: verify.AuthError) -> None:
        self._auth_reasons[auth_failure_reason(error)].inc()

    def jwks_fetch(self, issuer: str, ok: bool) -> None:
        children = self._jwks.get(issuer)
        if children is None:  # an issuer unknown at start-up (not expected): create once
            children = self._jwks[issuer] = (
                self.jwks_fetches.labels(issuer, "success"),
                self.jwks_fetches.labels(issuer, "failure"),
            )
        children[0 if ok else 1].inc()

    # -- exposition -------------------------------------------------------------------------

    def render(self) -> bytes:
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry(auto_describe=False)
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics``: Prometheus text exposition; no token (the address allow-list applies)."""
    gateway: Gateway = request.app.state.gateway
    return Response(gateway.metrics.render(), headers={"content-type": CONTENT_TYPE_LATEST})


class InstrumentedModelClient:
    """A :class:`TextModelClient` that counts model calls, their duration and tokens."""

    def __init__(self, inner: TextModelClient, metrics: GatewayMetrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def complete(self, request: ModelRequest) -> ModelResult:
        metrics = self._metrics
        success, error, duration = metrics.family(request.family)
        metrics.model_inflight.inc()
        start = time.perf_counter()
        try:
            result = await self._inner.complete(request)
        except BaseException:
            error.inc()
            raise
        finally:
            duration.observe(time.perf_counter() - start)
            metrics.model_inflight.dec()
        success.inc()
        usage = result.usage
        metrics.tenant_usage(USAGE_KEY.get(), usage)
        if usage is not None:
            add_tokens(usage.input_tokens, usage.output_tokens)
            if usage.input_tokens:
                metrics.input_tokens.inc(usage.input_tokens)
            if usage.output_tokens:
                metrics.output_tokens.inc(usage.output_tokens)
        return result

    async def stream(self, request: ModelRequest) -> TextStream:
        metrics = self._metrics
        children = metrics.family(request.family)
        metrics.model_inflight.inc()
        start = time.perf_counter()
        try:
            inner = await self._inner.stream(request)
        except BaseException:
            children[1].inc()
            children[2].observe(time.perf_counter() - start)
            metrics.model_inflight.dec()
            raise
        return _InstrumentedStream(inner, metrics, children, start, USAGE_KEY.get())


class _InstrumentedStream:
    """Counts one streamed model call when it ends (exhausted, failed or closed)."""

    __slots__ = ("_children", "_done", "_failed", "_inner", "_metrics", "_start", "_usage_key")

    def __init__(
        self,
        inner: TextStream,
        metrics: GatewayMetrics,
        children: tuple[Counter, Counter, Histogram],
        start: float,
        usage_key: tuple[str, str] | None = None,
    ) -> None:
        self._usage_key = usage_key  # read when the call started: the stream outlives it
        self._inner = inner
        self._metrics = metrics
        self._children = children
        self._start = start
        self._done = False
        self._failed = False

    async def _iterate(self) -> AsyncIterator[str]:
        try:
            async for delta in self._inner:
                yield delta
        except ModelError:
            self._failed = True
            raise

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    # What the model reported at the end of the stream, passed through unchanged.
    @property
    def usage(self) -> Usage | None:
        return getattr(self._inner, "usage", None)

    @property
    def finish_reason(self) -> str | None:
        return getattr(self._inner, "finish_reason", None)

    @property
    def tool_deltas(self) -> list[ToolCallDelta] | None:
        """The provider stream's pending tool-call pieces (the same list; see TextStream)."""
        return getattr(self._inner, "tool_deltas", None)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._finish()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        success, error, duration = self._children
        (error if self._failed else success).inc()
        self._metrics.tenant_usage(self._usage_key, self.usage)
        duration.observe(time.perf_counter() - self._start)
        usage = self.usage
        if usage is not None:  # the request's usage (direct paths); the counters stay as they are
            add_tokens(usage.input_tokens, usage.output_tokens)
        self._metrics.model_inflight.dec()


__all__ = [
    "GatewayMetrics",
    "InstrumentedModelClient",
    "auth_failure_reason",
    "metrics_endpoint",
]

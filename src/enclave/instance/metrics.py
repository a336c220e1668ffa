"""Prometheus metrics of the instance, served as text at ``GET /metrics``.

Each app has its own :class:`~prometheus_client.CollectorRegistry` (tests build many apps in
one process), as in the gateway (``enclave/gateway/metrics.py``). Labels stay bounded: the
name of a limit or an authentication failure reason, never a user, a token or an address.

``/metrics`` needs no token (as the gateway's) but is subject to the client address allow-list
like every other path. With several workers each worker counts its own share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from enclave.instance.usage import Counts

PATH: Final = "/metrics"


@dataclass(frozen=True, slots=True)
class _AiSeries:
    """One feature and model's AI counters, looked up once (``labels()`` per request costs
    more than the increments themselves)."""

    requests: Counter
    errors: Counter
    input_tokens: Counter
    output_tokens: Counter
    seconds: Counter


# Feature × model pairs are bounded (the feature list, the administrator's models); the cap
# only guards against a model list that keeps changing in a long-lived process.
_MAX_AI_SERIES: Final = 4096


class InstanceMetrics:
    def __init__(self, limit_names: tuple[str, ...], failure_reasons: tuple[str, ...]) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=False)
        self.rate_limited = Counter(
            "enclave_instance_rate_limited_requests_total",
            "Requests refused with 429 by an instance limit, by limit name.",
            ["limit"],
            registry=registry,
        )
        self.failed_authentications = Counter(
            "enclave_instance_failed_authentications_total",
            "Requests with a personal access token that did not authenticate, by reason.",
            ["reason"],
            registry=registry,
        )
        self.address_bans = Counter(
            "enclave_instance_failed_authentication_bans_total",
            "Client addresses banned after too many failed authentications.",
            registry=registry,
        )
        # Editors' usage pings (POST /api/v4/usage_data/track_event): counted, nothing kept.
        # No label: event names are the client's choice, so they would be unbounded.
        self.usage_events = Counter(
            "enclave_instance_usage_events_total",
            "Usage events editors reported with POST /api/v4/usage_data/track_event(s).",
            registry=registry,
        )
        # AI usage over every path (instance endpoints and the gateway's direct paths), by
        # feature and model: both are bounded (the feature list, the administrator's models).
        # Never by user: that is what the usage API is for (labels would be unbounded).
        ai_labels = ["feature", "model"]
        self.ai_requests = Counter(
            "enclave_instance_ai_requests_total",
            "AI requests, by feature and model (every path).",
            ai_labels,
            registry=registry,
        )
        self.ai_errors = Counter(
            "enclave_instance_ai_errors_total",
            "AI requests that failed (HTTP status 400 or more), by feature and model.",
            ai_labels,
            registry=registry,
        )
        self.ai_tokens = Counter(
            "enclave_instance_ai_tokens_total",
            "Model tokens, by feature, model and direction (input, output).",
            [*ai_labels, "direction"],
            registry=registry,
        )
        self.ai_seconds = Counter(
            "enclave_instance_ai_request_seconds_total",
            "Time spent answering AI requests, by feature and model (divide by requests for "
            "the mean latency).",
            ai_labels,
            registry=registry,
        )
        self.usage_dropped_requests = Counter(
            "enclave_instance_usage_dropped_requests_total",
            "AI requests not recorded in the usage table because the buffer was full.",
            registry=registry,
        )
        self._ai_series: dict[tuple[str, str], _AiSeries] = {}
        # Children exist from the start, so every series is scraped as 0 before it first counts.
        for name in limit_names:
            self.rate_limited.labels(name)
        for reason in failure_reasons:
            self.failed_authentications.labels(reason)

    def _series(self, feature: str, model: str) -> _AiSeries:
        key = (feature, model)
        series = self._ai_series.get(key)
        if series is None:
            series = _AiSeries(
                self.ai_requests.labels(feature, model),
                self.ai_errors.labels(feature, model),
                self.ai_tokens.labels(feature, model, "input"),
                self.ai_tokens.labels(feature, model, "output"),
                self.ai_seconds.labels(feature, model),
            )
            if len(self._ai_series) >= _MAX_AI_SERIES:
                self._ai_series.clear()
            self._ai_series[key] = series
        return series

    def observe_usage(self, feature: str, model: str | None, counts: Counts) -> None:
        series = self._series(feature, model or "")
        series.requests.inc(counts.requests)
        if counts.errors:
            series.errors.inc(counts.errors)
        if counts.input_tokens:
            series.input_tokens.inc(counts.input_tokens)
        if counts.output_tokens:
            series.output_tokens.inc(counts.output_tokens)
        series.seconds.inc(counts.latency_ms_total / 1000)

    def usage_dropped(self, requests: int) -> None:
        self.usage_dropped_requests.inc(requests)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def metrics_endpoint(request: Request) -> Response:
    metrics: InstanceMetrics = request.app.state.ctx.limits.metrics
    return Response(metrics.render(), headers={"content-type": CONTENT_TYPE_LATEST})

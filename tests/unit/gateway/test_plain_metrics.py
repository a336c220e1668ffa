"""The plain-float metric types render exactly what prometheus-client's own would."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)

from enclave.gateway import metrics as gateway_metrics
from enclave.gateway import plain_metrics
from enclave.gateway.metrics import REQUEST_BUCKETS, GatewayMetrics
from enclave.gateway.models.base import Usage
from enclave.gateway.plain_metrics import PLAIN, STOCK, MetricTypes, metric_types

# Bucket bounds themselves, values between and beyond them, zero, negatives, +Inf and NaN.
OBSERVATIONS = (
    *REQUEST_BUCKETS,
    0.0,
    0.0004,
    0.0007,
    0.003,
    0.4999,
    0.5000001,
    59.9,
    61.0,
    1e9,
    -0.25,
    math.inf,
    math.nan,
)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # ``_created`` samples hold the creation time: the same in both registries.
    monkeypatch.setattr("prometheus_client.metrics.time.time", lambda: 1_700_000_000.25)
    monkeypatch.setattr(plain_metrics.time, "time", lambda: 1_700_000_000.25)


@pytest.fixture(params=[True, False], ids=["created", "no-created"])
def created_series(request: pytest.FixtureRequest) -> Iterator[None]:
    if not request.param:
        disable_created_metrics()
    try:
        yield
    finally:
        enable_created_metrics()


def _exercise(types: MetricTypes) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    counter = types.counter("c", "A counter.", ["a", "b"], registry=registry)
    bare = types.counter("bare", "No labels.", registry=registry)
    types.counter("never", "No child ever made.", ["a"], registry=registry)
    gauge = types.gauge("g", "A gauge.", registry=registry, multiprocess_mode="livesum")
    labelled_gauge = types.gauge("lg", "Labelled.", ["x"], registry=registry)
    histogram = types.histogram(
        "h", "A histogram.", ["r"], buckets=REQUEST_BUCKETS, registry=registry
    )
    for index, value in enumerate(OBSERVATIONS):
        histogram.labels("first" if index % 3 else "second").observe(value)
        counter.labels(str(index % 4), "x").inc()
        counter.labels("big", "y").inc(abs(value) if math.isfinite(value) else 2)
        bare.inc(0.5)
        gauge.inc()
        gauge.dec(0.25)
        labelled_gauge.labels(str(index % 2)).set(value)
    counter.labels("reset", "z").inc(3)
    counter.labels("reset", "z").reset()
    return generate_latest(registry)


@pytest.mark.usefixtures("created_series")
def test_plain_types_render_the_same_text() -> None:
    assert _exercise(PLAIN) == _exercise(STOCK)


def test_plain_counter_refuses_negative_increments_as_prometheus_does() -> None:
    for types in (PLAIN, STOCK):
        counter = types.counter("c", "A counter.", registry=CollectorRegistry())
        with pytest.raises(ValueError, match="non-negative"):
            counter.inc(-1)


def _gateway_metrics_text(types: MetricTypes, monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setattr(gateway_metrics, "metric_types", lambda multiprocess: types)
    metrics = GatewayMetrics(routes=["/a", "/b"], families=["codestral"], issuers=["https://i"])
    for status, seconds in ((200, 0.0004), (200, 0.0031), (401, 0.2), (404, 7.0)):
        metrics.observe_request("/a" if status != 404 else "/nowhere", status, seconds)
    success, error, duration = metrics.family("codestral")
    success.inc()
    error.inc()
    duration.observe(1.5)
    metrics.model_inflight.inc()
    metrics.input_tokens.inc(27)
    metrics.output_tokens.inc(9)
    metrics.tenant_request("https://i", "code_completions")
    metrics.tenant_usage(("https://i", "code_completions"), Usage(27, 9))
    metrics.tenant_limited("https://i")
    metrics.tenant_limit("https://i", 12.5)
    metrics.jwks_fetch("https://i", ok=True)
    metrics.token_cache_hits.inc()
    metrics.token_cache_misses.inc()
    metrics.rate_limited_scopes["user"].inc()
    return metrics.render()


def test_gateway_metrics_render_as_with_prometheus_types(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _gateway_metrics_text(PLAIN, monkeypatch) == _gateway_metrics_text(STOCK, monkeypatch)


def test_multiprocess_mode_keeps_prometheus_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Workers must write their values to prometheus-client's shared files.
    assert metric_types(multiprocess=True) == (Counter, Gauge, Histogram)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    shared = GatewayMetrics(routes=["/a"], families=[], issuers=[])
    assert type(shared.requests) is Counter
    assert type(shared.request_duration) is Histogram
    assert type(shared.model_inflight) is Gauge
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    alone = GatewayMetrics(routes=["/a"], families=[], issuers=[])
    assert type(alone.requests) is plain_metrics.PlainCounter


_RECORD = """
import sys
from enclave.gateway.metrics import GatewayMetrics
metrics = GatewayMetrics(routes=["/a"], families=["codestral"], issuers=[])
if sys.argv[1] == "record":
    metrics.observe_request("/a", 200, 0.002)
    metrics.family("codestral")[0].inc()
else:
    sys.stdout.write(metrics.render().decode())
"""


def test_workers_share_their_counts_in_multiprocess_mode(tmp_path: Path) -> None:
    # Two worker processes count one request each; a third one's /metrics sums them.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", _RECORD, "record"], env=env, check=True)
    text = subprocess.run(
        [sys.executable, "-c", _RECORD, "render"], env=env, check=True, capture_output=True
    ).stdout.decode()
    assert 'enclave_gateway_requests_total{route="/a",status="200"} 2.0' in text
    assert 'enclave_gateway_request_duration_seconds_count{route="/a"} 2.0' in text
    assert 'enclave_gateway_model_requests_total{family="codestral",outcome="success"} 2.0' in text

"""Prometheus metrics at GET /metrics: what is counted, labels, and who may read them."""

from __future__ import annotations

from pathlib import Path

import pytest
from gateway_fakes import INSTANCE_ID, Harness, HarnessFactory
from prometheus_client.parser import text_string_to_metric_families

from enclave.gateway.auth import verify
from enclave.gateway.metrics import AUTH_REASONS, GatewayMetrics, auth_failure_reason

pytestmark = pytest.mark.anyio


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _value(text: str, name: str, **labels: str) -> float | None:
    return _samples(text).get((name, tuple(sorted(labels.items()))))


async def _scrape(gw: Harness) -> str:
    response = await gw.client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_completion_is_counted(gw: Harness) -> None:
    response = await gw.complete()
    assert response.status_code == 200, response.text
    text = await _scrape(gw)
    route = "/v2/code/completions"
    assert _value(text, "enclave_gateway_requests_total", route=route, status="200") == 1
    assert _value(text, "enclave_gateway_request_duration_seconds_count", route=route) == 1
    assert (
        _value(text, "enclave_gateway_model_requests_total", family="codestral", outcome="success")
        == 1
    )
    assert (
        _value(text, "enclave_gateway_model_request_duration_seconds_count", family="codestral")
        == 1
    )
    assert _value(text, "enclave_gateway_model_inflight") == 0
    assert _value(text, "enclave_gateway_tokens_total", direction="input") == 27
    assert _value(text, "enclave_gateway_tokens_total", direction="output") == 9
    assert _value(text, "enclave_gateway_token_cache_misses_total") == 1
    assert _value(text, "enclave_gateway_token_cache_hits_total") == 0
    issuer = gw.issuer.base.rstrip("/")
    assert _value(text, "enclave_gateway_jwks_fetches_total", issuer=issuer, outcome="success") == 1
    # Pre-created children: every rate-limit scope and auth reason shows, at 0.
    assert _value(text, "enclave_gateway_rate_limited_total", scope="user") == 0
    assert _value(text, "enclave_gateway_auth_failures_total", reason="token_expired") == 0


async def test_cached_token_is_a_hit(gw: Harness) -> None:
    headers = gw.headers()
    for _ in range(3):
        assert (await gw.complete(headers=headers)).status_code == 200
    text = await _scrape(gw)
    assert _value(text, "enclave_gateway_token_cache_misses_total") == 1
    assert _value(text, "enclave_gateway_token_cache_hits_total") == 2


async def test_streamed_completion_is_counted_when_it_ends(gw: Harness) -> None:
    response = await gw.complete(gw.body(stream=True))
    assert response.status_code == 200
    text = await _scrape(gw)
    assert (
        _value(text, "enclave_gateway_model_requests_total", family="codestral", outcome="success")
        == 1
    )
    assert _value(text, "enclave_gateway_model_inflight") == 0


async def test_model_error_is_counted(gw: Harness) -> None:
    gw.model.status = 500
    response = await gw.complete()
    assert response.status_code == 503
    text = await _scrape(gw)
    assert (
        _value(text, "enclave_gateway_model_requests_total", family="codestral", outcome="error")
        == 1
    )
    assert _value(text, "enclave_gateway_model_inflight") == 0


async def test_route_label_is_the_template(gw: Harness) -> None:
    headers = gw.headers()
    await gw.client.post("/v1/chat/explain_code", json={}, headers=headers)
    await gw.client.post("/v1/prompts/code_suggestions%2Fgenerations", json={}, headers=headers)
    await gw.client.get("/no/such/path/12345")
    text = await _scrape(gw)
    routes = {
        dict(labels)["route"]
        for (name, labels) in _samples(text)
        if name == "enclave_gateway_requests_total"
    }
    assert "/v1/chat/{chat_invokable}" in routes
    assert "/v1/prompts/{prompt_id:path}" in routes
    assert "<unmatched>" in routes
    assert not any("explain_code" in route or "12345" in route for route in routes)


async def test_auth_failures_are_counted_by_reason(gw: Harness) -> None:
    await gw.client.post("/v2/code/completions", json=gw.body())  # no Authorization
    expired = gw.token(exp=1_000_000, iat=999_000, nbf=999_000)
    await gw.complete(headers=gw.headers(expired))
    await gw.complete(headers=gw.headers(**{"X-Gitlab-Instance-Id": "someone-else"}))
    text = await _scrape(gw)
    for reason in ("missing_authorization", "token_expired", "header_mismatch"):
        assert _value(text, "enclave_gateway_auth_failures_total", reason=reason) == 1, reason
    assert (
        _value(text, "enclave_gateway_requests_total", route="/v2/code/completions", status="401")
        == 3
    )


async def test_metrics_need_no_token(gw: Harness) -> None:
    response = await gw.client.get("/metrics")  # no Authorization header at all
    assert response.status_code == 200
    assert "# TYPE enclave_gateway_requests_total counter" in response.text


async def test_metrics_are_subject_to_the_address_allow_list(gw: Harness) -> None:
    import httpx

    transport = httpx.ASGITransport(app=gw.app, client=("203.0.113.9", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        response = await client.get("/metrics")
    assert response.status_code == 403
    assert "enclave_gateway" not in response.text


async def test_each_app_has_its_own_registry(make_harness: HarnessFactory) -> None:
    one: Harness = await make_harness()
    two: Harness = await make_harness()
    assert (await one.complete()).status_code == 200
    text = await _scrape(two)
    assert (
        _value(text, "enclave_gateway_requests_total", route="/v2/code/completions", status="200")
        is None
    )


def test_auth_failure_reasons_are_bounded() -> None:
    cases = {
        verify.AuthError(401, verify.NO_AUTH_HEADER): "missing_authorization",
        verify.AuthError(401, verify.TOKEN_EXPIRED): "token_expired",
        verify.AuthError(401, verify.header_mismatch("X-Gitlab-Realm")): "header_mismatch",
        verify.AuthError(503, "cannot fetch keys of https://x"): "issuer_unavailable",
        verify.AuthError(401, verify.forbidden("untrusted issuer (...)")): "untrusted_issuer",
        verify.AuthError(401, verify.forbidden("something new")): "invalid_token",
    }
    for error, reason in cases.items():
        assert auth_failure_reason(error) == reason
        assert reason in AUTH_REASONS


def test_unknown_route_and_family_fold_into_bounded_labels() -> None:
    metrics = GatewayMetrics(routes=["/a"], families=["codestral"], issuers=[])
    metrics.observe_request("/raw/path/42", 404, 0.001)
    assert metrics.family("made-up")[0] is metrics.family("other")[0]
    text = metrics.render().decode()
    assert "/raw/path/42" not in text
    assert _value(text, "enclave_gateway_requests_total", route="<unmatched>", status="404") == 1


async def test_instance_id_is_not_a_label(gw: Harness) -> None:
    await gw.complete()
    assert INSTANCE_ID not in await _scrape(gw)


def test_multiprocess_mode_reads_the_shared_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    metrics = GatewayMetrics(routes=["/a"], families=[], issuers=[])
    assert metrics.multiprocess
    metrics.render()  # aggregates the (here: empty) directory instead of this registry
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    assert not GatewayMetrics(routes=["/a"], families=[], issuers=[]).multiprocess


def test_instrumented_stream_passes_usage_and_finish_reason_through() -> None:
    """The metrics wrapper must not hide what the model reported at the end of a stream."""
    import asyncio
    from collections.abc import AsyncIterator
    from typing import Any

    from enclave.gateway.metrics import InstrumentedModelClient
    from enclave.gateway.models.base import Usage

    class Stream:
        usage = Usage(input_tokens=7, output_tokens=3)
        finish_reason = "stop"

        async def _gen(self) -> AsyncIterator[str]:
            yield "a"
            yield "b"

        def __aiter__(self) -> AsyncIterator[str]:
            return self._gen()

        async def aclose(self) -> None:
            return None

    class Client:
        async def complete(self, request: Any) -> Any:
            raise AssertionError("not used")

        async def stream(self, request: Any) -> Stream:
            return Stream()

    class Request:
        family = "codestral"

    async def run() -> None:
        metrics = GatewayMetrics(routes=["/a"], families=["codestral"], issuers=[])
        stream: Any = await InstrumentedModelClient(Client(), metrics).stream(Request())  # type: ignore[arg-type]
        assert [delta async for delta in stream] == ["a", "b"]
        await stream.aclose()
        assert stream.usage == Usage(input_tokens=7, output_tokens=3)
        assert stream.finish_reason == "stop"

    asyncio.run(run())

"""Every provider fails the same way: one error class per kind of failure, retries only if safe."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from provider_fakes import FakeProvider, Reply
from provider_setup import (
    AWS_SECRET_KEY,
    KINDS,
    Setup,
    cut_stream,
    error_reply,
    model_client,
    setup,
    success,
)
from wire_fixtures import ANSWER

from enclave.common.http1 import Http1Client
from enclave.common.net import free_port
from enclave.gateway.models.base import (
    ContextTooLong,
    ModelAuthRefused,
    ModelBadResponse,
    ModelError,
    ModelNotFound,
    ModelRateLimited,
    ModelServerError,
    ModelTimeout,
    ModelUnreachable,
)
from enclave.gateway.models.http_provider import STALE_CONNECTION_RETRIES

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("kind", KINDS)]


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    server = FakeProvider()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def session() -> AsyncIterator[Http1Client]:
    async with model_client() as client:
        yield client


async def streamed(s: Setup) -> str:
    stream = await s.client.stream(s.request())
    try:
        return "".join([delta async for delta in stream])
    finally:
        await stream.aclose()


def no_secret(error: BaseException, s: Setup) -> None:
    text = str(error)
    for secret in (s.api_key, AWS_SECRET_KEY, "PRIVATE KEY"):
        assert secret not in text


async def test_refused_connection_is_unreachable_after_bounded_retries(
    kind: str, fake: FakeProvider, session: Http1Client
) -> None:
    s = setup(kind, session, fake)
    dead = f"http://127.0.0.1:{free_port()}"
    endpoint = s.endpoint.replace(fake.base, dead)
    for call in (s.client.complete, s.client.stream):
        with pytest.raises(ModelUnreachable, match="connection refused") as caught:
            await call(s.request(endpoint=endpoint))
        no_secret(caught.value, s)
    assert fake.seen == []


async def test_stalled_server_times_out(
    kind: str, fake: FakeProvider, session: Http1Client
) -> None:
    s = setup(kind, session, fake, timeout_s=0.3)
    fake.script(Reply(stall=True))
    with pytest.raises(ModelTimeout, match=r"did not answer within 0\.3 s"):
        await s.client.complete(s.request())
    with pytest.raises(ModelTimeout, match=r"sent nothing for 0\.3 s"):
        await s.client.stream(s.request())
    assert len(fake.seen) == 2  # a timeout is not retried: the model may be generating


async def test_429_then_success_is_retried(
    kind: str, fake: FakeProvider, session: Http1Client
) -> None:
    s = setup(kind, session, fake)
    fake.script(error_reply(kind, 429, "slow down"), success(kind, stream=False))
    assert (await s.client.complete(s.request())).text == ANSWER
    fake.script(error_reply(kind, 429, "slow down", **{"Retry-After": "0"}), success(kind, True))
    assert await streamed(s) == ANSWER
    assert len(fake.seen) == 4


async def test_429_asking_for_long_waits_is_passed_through(
    kind: str, fake: FakeProvider, session: Http1Client
) -> None:
    s = setup(kind, session, fake)
    fake.script(error_reply(kind, 429, "slow down", **{"Retry-After": "30"}))
    with pytest.raises(ModelRateLimited) as caught:
        await s.client.complete(s.request())
    assert (caught.value.status, caught.value.retry_after) == (429, "30")
    assert len(fake.seen) == 1


async def test_429_retries_are_bounded(kind: str, fake: FakeProvider, session: Http1Client) -> None:
    s = setup(kind, session, fake, retries=2)
    fake.script(error_reply(kind, 429, "slow down"))
    with pytest.raises(ModelRateLimited, match="rate limiting"):
        await s.client.stream(s.request())
    assert len(fake.seen) == 3


async def test_503_then_success_is_retried(
    kind: str, fake: FakeProvider, session: Http1Client
) -> None:
    s = setup(kind, session, fake)
    fake.script(error_reply(kind, 503, "warming up"), success(kind, stream=True))
    assert await streamed(s) == ANSWER


async def test_connection_dropped_before_any_answer_is_retried(
    kind: str, fake: FakeProvider, session: Http1Client
) -> None:
    # What a model server's idle timeout does to a pooled connection: nothing was generated.
    s = setup(kind, session, fake)
    fake.script(Reply(drop=True), success(kind, stream=False))
    assert (await s.client.complete(s.request())).text == ANSWER
    assert len(fake.seen) == 2


async def test_a_server_that_always_drops_is_tried_a_bounded_number_of_times(
    kind: str, fake: FakeProvider, session: Http1Client
) -> None:
    s = setup(kind, session, fake)
    fake.script(Reply(drop=True))
    with pytest.raises(ModelServerError, match="closed the connection early"):
        await s.client.complete(s.request())
    assert len(fake.seen) == 1 + STALE_CONNECTION_RETRIES


async def test_500_fails_once_then_the_next_call_succeeds(
    kind: str, fake: FakeProvider, session: Http1Client
) -> None:
    # A 500 may have come after work was done: not retried, reported with the model's reason.
    s = setup(kind, session, fake)
    fake.script(error_reply(kind, 500, f"CUDA out of memory {s.api_key}"), success(kind, False))
    with pytest.raises(ModelServerError, match="failed \\(HTTP 500\\): CUDA out of memory") as c:
        await s.client.complete(s.request())
    no_secret(c.value, s)
    assert (await s.client.complete(s.request())).text == ANSWER
    assert len(fake.seen) == 2


async def test_garbage_answers_are_bad_responses(
    kind: str, fake: FakeProvider, session: Http1Client
) -> None:
    s = setup(kind, session, fake)
    fake.script(Reply(body=b"<html>proxy error</html>", content_type="application/json"))
    with pytest.raises(ModelBadResponse, match="not JSON"):
        await s.client.complete(s.request())
    fake.script(Reply(body=b'{"unexpected": true}'))
    with pytest.raises(ModelBadResponse):
        await s.client.complete(s.request())
    content_type = success(kind, stream=True).content_type
    garbage = b"data: {not json\n\n" if "event-stream" in content_type else b"\x00" * 64
    fake.script(Reply(content_type=content_type, chunks=[garbage]))
    with pytest.raises(ModelBadResponse):
        await streamed(s)


async def test_close_mid_stream_is_a_server_error(
    kind: str, fake: FakeProvider, session: Http1Client
) -> None:
    s = setup(kind, session, fake)
    fake.script(cut_stream(kind))
    stream = await s.client.stream(s.request())
    received: list[str] = []
    with pytest.raises(ModelServerError):
        async for delta in stream:
            received.append(delta)
    await stream.aclose()
    assert len(fake.seen) == 1  # never retried once the answer has begun


@pytest.mark.parametrize(
    ("status", "message", "error"),
    [
        (401, "invalid x-api-key", ModelAuthRefused),
        (403, "not authorized", ModelAuthRefused),
        (404, "model not found", ModelNotFound),
        (400, "prompt is too long: 210000 tokens > 200000 maximum", ContextTooLong),
        (400, "Input is too long for requested model.", ContextTooLong),
        (
            400,
            "The input token count (1048600) exceeds the maximum number of tokens",
            ContextTooLong,
        ),
    ],
)
async def test_status_maps_to_one_error_class(
    kind: str,
    status: int,
    message: str,
    error: type[ModelError],
    fake: FakeProvider,
    session: Http1Client,
) -> None:
    s = setup(kind, session, fake)
    fake.script(error_reply(kind, status, message))
    with pytest.raises(error) as caught:
        await s.client.complete(s.request())
    assert caught.value.status == 503
    assert caught.value.upstream_status == status
    if error is ModelAuthRefused:
        assert "check the" in caught.value.reason
    assert len(fake.seen) == 1

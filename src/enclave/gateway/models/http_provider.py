"""What every HTTP model provider shares: the call, safe retries, failure mapping, streams.

A provider module subclasses :class:`HttpProvider` and says only what differs: the URL, body
and headers of a call (:meth:`~HttpProvider.build`), how to read a whole answer
(:meth:`~HttpProvider.parse_result`) and the text deltas of a streamed one
(:meth:`~HttpProvider.deltas`). Everything else happens here once, the same for every provider:
the POST over the gateway's pooled session (redirects never followed, so a key goes only to
its own endpoint), bounded jittered retries where they are safe, the mapping of each failure to
one :class:`~enclave.gateway.models.base.ModelError` subclass with a message that names the
endpoint and never a secret, and the stream plumbing (close semantics, whole-answer fallback).
"""

from __future__ import annotations

import asyncio
import random
import re
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import replace
from typing import Any, ClassVar, Final

import orjson
from yarl import URL

from enclave.common.http1 import (
    BadResponse,
    ConnectFailed,
    ConnectTimeout,
    DeadlineExceeded,
    Disconnected,
    Http1Client,
    HttpClientError,
    InvalidRequest,
    NameNotResolved,
    ReadTimeout,
    Response,
    Timeouts,
    TlsFailed,
    TruncatedBody,
)
from enclave.common.http1.body import Body
from enclave.common.logging import redact_text
from enclave.gateway.egress import EgressRefused, display_url
from enclave.gateway.http import connect_failure
from enclave.gateway.models.base import (
    REQUEST_MODEL_TIMEOUT,
    ChatMessage,
    ContextTooLong,
    EndpointNotAllowed,
    ModelAuthRefused,
    ModelBadResponse,
    ModelError,
    ModelNotFound,
    ModelRateLimited,
    ModelRequest,
    ModelRequestRejected,
    ModelResult,
    ModelServerError,
    ModelTimeout,
    ModelUnreachable,
    TextStream,
    ToolCallDelta,
    Usage,
)
from enclave.gateway.models.tls import context_for

MAX_RESPONSE_BYTES: Final = 8 * 1024 * 1024
MAX_ERROR_BODY_BYTES: Final = 64 * 1024

# How providers say "the prompt is longer than the context window" (OpenAI/vLLM, Anthropic,
# Bedrock, Vertex/Gemini, llama.cpp, Ollama): one check for all of them.
_CONTEXT_TOO_LONG: Final = re.compile(
    r"context[_ ]length|maximum context|prompt is too long|input is too long|too many "
    r"(input )?tokens|exceeds the (maximum|context)|context window|exceed_context_size",
    re.IGNORECASE,
)

# A PEM private key (a service-account key echoed back), to the end of the text if cut.
_PRIVATE_KEY: Final = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"
)

# Answers that mean "busy, nothing generated": 503, and Anthropic's 529 (overloaded).
_RETRY_STATUSES: Final = frozenset({503, 529})

# (url, body, headers) of one outbound call; a URL already percent-encoded when signed.
Call = tuple[str | URL, bytes, dict[str, str]]


def clean_error_message(message: Any, secret: str | None) -> str:
    """An upstream message fit for callers and logs: one line, bounded, secrets removed.

    Secrets go before the cut, so that no prefix of one survives it.
    """
    text = " ".join(str(message).split())
    if secret and len(secret) >= 6:
        text = text.replace(secret, "[REDACTED]")
    text = _PRIVATE_KEY.sub("[REDACTED]", text)
    return redact_text(text[:300])


def upstream_error_message(body: bytes, secret: str | None) -> str:
    """The human part of an error body, redacted.

    Understands OpenAI's ``{"error": {"message"}}``, Anthropic's ``{"type": "error", "error":
    {"message"}}``, Google's ``{"error": {"message", "status"}}``, AWS's ``{"message"}`` /
    ``{"Message"}`` and FastAPI's ``{"detail"}``; anything else is shown as text.
    """
    message: Any = None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        message = body.decode("utf-8", "replace")
    else:
        if isinstance(data, list) and data and isinstance(data[0], dict):
            data = data[0]  # Vertex wraps some errors in a one-element list
        if isinstance(data, dict):
            error = data.get("error")
            if isinstance(error, dict):
                message = error.get("message")
            elif isinstance(error, str):
                message = error
            message = message or data.get("detail") or data.get("message") or data.get("Message")
        else:
            message = data
    return clean_error_message(message, secret) if message else ""


_LENGTH: Final = frozenset({"length", "max_tokens", "MAX_TOKENS", "model_length_exceeded"})
_TOOL_CALLS: Final = frozenset({"tool_calls", "tool_use", "function_call"})


def finish_reason(value: Any) -> str:
    """One finish reason from any provider's: "length" when cut by max tokens, "tool_calls"
    when the model stopped to call tools (only requests with tools get it), else "stop"."""
    if value in _LENGTH:
        return "length"
    return "tool_calls" if value in _TOOL_CALLS else "stop"


def usage_of(data: Any, input_key: str, output_key: str) -> Usage | None:
    """Token counts from a provider's usage object; None when it reports none."""
    if not isinstance(data, dict):
        return None
    given, produced = data.get(input_key), data.get(output_key)
    if not isinstance(given, int) and not isinstance(produced, int):
        return None
    return Usage(
        input_tokens=given if isinstance(given, int) else 0,
        output_tokens=produced if isinstance(produced, int) else 0,
    )


async def sse_events(content: Body) -> AsyncGenerator[tuple[str, bytes], None]:
    """``(event, data)`` of each server-sent event (W3C EventSource framing).

    ``event`` is "" when the event has no ``event:`` field; multi-line data is joined with
    newlines. Comments (``:`` lines, keep-alives), ``id:`` and ``retry:`` are skipped.

    A reader that stops before the end (at ``[DONE]``, ``message_stop``) should close it
    (``contextlib.aclosing``): an async generator dropped unfinished is closed by the event
    loop's finalizer hook instead, which uvloop runs as a new task woken through
    ``call_soon_threadsafe`` (an eventfd write and an extra loop turn, two per stream with the
    line reader inside, landing on whatever request comes next).
    """
    event = ""
    data: list[bytes] = []
    async with aclosing(content.lines()) as lines:
        async for raw in lines:
            line = raw.rstrip(b"\r\n")
            if not line:
                if data:
                    yield event, b"\n".join(data)
                event, data = "", []
                continue
            if line[:1] == b":":
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event = value.decode("utf-8", "replace")
    if data:  # a last event without its blank line: servers that close right after it
        yield event, b"\n".join(data)


def json_event(provider: HttpProvider, request: ModelRequest, data: bytes) -> Any:
    """The JSON of one stream event, or :class:`ModelBadResponse`."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise provider.bad_response(request, "sent an event that is not JSON") from None


class CircuitBreaker:
    """Per-endpoint circuit breaker: after ``threshold`` failures in a row (unreachable, timed
    out, 5xx), calls to that endpoint fail at once for ``cooldown_s``; then one call is let
    through, and one more failure opens the circuit again. Shared by every provider.

    Why: a dead model server otherwise costs every request the connect timeout and retries.
    """

    __slots__ = ("_clock", "_cooldown_s", "_state", "_threshold")

    def __init__(
        self,
        threshold: int = 5,
        cooldown_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._state: dict[str, list[float]] = {}  # endpoint -> [failures in a row, open until]

    def open_for(self, endpoint: str) -> float | None:
        """Seconds the circuit of ``endpoint`` stays open; None when calls may go."""
        state = self._state.get(endpoint)
        if state is None or not state[1]:
            return None
        left = state[1] - self._clock()
        if left > 0:
            return left
        state[1] = 0.0  # half-open: this call is the probe
        return None

    def succeeded(self, endpoint: str) -> None:
        if endpoint in self._state:
            del self._state[endpoint]

    def failed(self, endpoint: str) -> None:
        if self._threshold <= 0:
            return
        state = self._state.get(endpoint)
        if state is None:
            if len(self._state) >= 1024:
                self._state.clear()  # bounded; forgetting failures only delays opening
            state = self._state[endpoint] = [0.0, 0.0]
        state[0] += 1
        if state[0] >= self._threshold:
            state[0] = self._threshold - 1  # after the cooldown, one more failure reopens it
            state[1] = self._clock() + self._cooldown_s


def _trips_breaker(error: Exception) -> bool:
    # The endpoint is down or broken; not the caller's fault (4xx) nor a busy signal (429).
    return isinstance(error, ModelUnreachable | ModelTimeout) or (
        isinstance(error, ModelServerError) and (error.upstream_status or 0) >= 500
    )


# Fresh tries after a pooled connection turned out dead, on top of the model's retries.
STALE_CONNECTION_RETRIES: Final = 4


def stale_connection(exc: BaseException) -> bool:
    """Whether the request failed on a connection the server had closed before answering:
    it disconnected before a status line, or the request could not be written. A refused
    connection (ConnectFailed) is the server being down, not this."""
    return isinstance(exc, Disconnected)


class HttpProvider(ABC):
    """Base of the providers that speak HTTP(S) with JSON bodies."""

    # Substring of the Content-Type of a real stream; anything else is read as a whole answer.
    stream_content_type: ClassVar[str] = "event-stream"
    # What the credentials are called, and what to check when the provider refuses them.
    credential_name: ClassVar[str] = "the API key"
    credential_hint: ClassVar[str] = "check the API key configured for this self-hosted model"
    # Said after "the model endpoint X <what went wrong>" for unusable answers.
    api_hint: ClassVar[str] = ""
    # Async step run after build (fetching an access token); None costs nothing per call.
    authorize: Callable[[ModelRequest, dict[str, str]], Awaitable[None]] | None = None

    def __init__(
        self,
        session: Http1Client,
        timeout_s: float,
        *,
        connect_timeout_s: float | None = None,
        retries: int = 2,
        backoff_s: float = 0.25,
        max_wait_s: float = 2.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        breaker: CircuitBreaker | None = None,
        tls: Mapping[str, ssl.SSLContext] | None = None,
    ) -> None:
        self._session = session
        self._breaker = breaker
        # Per-endpoint TLS (gateway.model_tls); empty: the session's default for every call.
        self._tls: Mapping[str, ssl.SSLContext] = tls or {}
        self._timeout_s = timeout_s
        connect = min(connect_timeout_s or timeout_s, timeout_s)
        self._connect_timeout_s = connect
        # Whole answers: one deadline. Streams: a deadline per read (the first byte, then each
        # chunk), so long answers may flow.
        self._timeout = Timeouts(connect=connect, total=timeout_s)
        self._stream_timeout = Timeouts(connect=connect, read=timeout_s)
        self._retries = retries
        self._backoff_s = backoff_s
        self._max_wait_s = max_wait_s
        self._sleep = sleep

    def timeout_s(self) -> float:
        """This call's limit: the instance's budget for the request when it sent one
        (enclave.common.timeouts), else ``gateway.model_timeout_s``."""
        return REQUEST_MODEL_TIMEOUT.get() or self._timeout_s

    def _timeouts(self, stream: bool) -> Timeouts:
        budget = REQUEST_MODEL_TIMEOUT.get()
        if budget is None:
            return self._stream_timeout if stream else self._timeout
        connect = min(self._connect_timeout_s, budget)
        if stream:
            return Timeouts(connect=connect, read=budget)
        return Timeouts(connect=connect, total=budget)

    def _tls_of(self, request: ModelRequest) -> ssl.SSLContext | None:
        """The endpoint's own TLS settings; None: the client's gateway-wide default."""
        return context_for(self._tls, request.endpoint)

    # -- what a provider says ---------------------------------------------------------------

    @abstractmethod
    def build(self, request: ModelRequest, stream: bool) -> Call:
        """The URL, body and headers of the call (no I/O)."""

    @abstractmethod
    def parse_result(self, request: ModelRequest, data: Any) -> ModelResult:
        """The whole answer from its parsed JSON; :meth:`bad_response` when misshapen."""

    @abstractmethod
    def deltas(
        self, request: ModelRequest, response: Response, stream: ProviderStream
    ) -> AsyncIterator[str]:
        """Text deltas of a streamed answer; sets ``stream.finish_reason`` / ``stream.usage``."""

    def secret(self, request: ModelRequest) -> str | None:
        """The credential to scrub from upstream messages."""
        return request.api_key

    def not_found(self, request: ModelRequest, said: str) -> str:
        """Why a 404 probably happened, after "the model endpoint X answered HTTP 404"."""
        return f"{said}; check the endpoint and that the model '{request.model}' exists there"

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> str | None:
        """A provider's own error kind when its status is not enough ("throttling", ...)."""
        return None

    # -- failures ---------------------------------------------------------------------------

    def bad_response(self, request: ModelRequest, what: str) -> ModelBadResponse:
        hint = f"; {self.api_hint}" if self.api_hint else ""
        return ModelBadResponse(f"the model endpoint {display_url(request.endpoint)} {what}{hint}")

    def http_error(
        self, request: ModelRequest, status: int, headers: Mapping[str, str], body: bytes
    ) -> ModelError:
        error = self._http_error(request, status, headers, body)
        error.upstream_status = status
        return error

    def _http_error(
        self, request: ModelRequest, status: int, headers: Mapping[str, str], body: bytes
    ) -> ModelError:
        endpoint = display_url(request.endpoint)
        said = upstream_error_message(body, self.secret(request))
        kind = self.classify(status, headers, body)
        if kind == "throttling" or status == 429:
            return ModelRateLimited(
                f"the model endpoint {endpoint} is rate limiting requests (HTTP {status}); "
                "retry later",
                status=429,
                retry_after=headers.get("Retry-After"),
            )
        if kind == "auth" or status in (401, 403):
            return ModelAuthRefused(
                f"the model endpoint {endpoint} refused {self.credential_name} (HTTP {status}); "
                f"{self.credential_hint}"
            )
        if kind == "context" or (400 <= status < 500 and _CONTEXT_TOO_LONG.search(said)):
            return ContextTooLong(
                f"the prompt is too long for the model '{request.model}' at {endpoint} "
                f"(HTTP {status}): {said}"
            )
        if kind == "timeout":
            detail = f": {said}" if said else ""
            return ModelTimeout(
                f"the model at {endpoint} took too long to answer (HTTP {status}){detail}"
            )
        if kind == "not_found" or status == 404:
            return ModelNotFound(
                f"the model endpoint {endpoint} answered HTTP {status}"
                + self.not_found(request, f": {said}" if said else "")
            )
        said = f": {said}" if said else ""
        if 300 <= status < 400:
            return ModelRequestRejected(
                f"the model endpoint {endpoint} answered with a redirect (HTTP {status}), which "
                "the gateway does not follow; register the URL it redirects to instead"
            )
        if 400 <= status < 500:
            return ModelRequestRejected(
                f"the model endpoint {endpoint} rejected the request (HTTP {status}){said}"
            )
        return ModelServerError(f"the model endpoint {endpoint} failed (HTTP {status}){said}")

    def transport_error(self, request: ModelRequest, exc: BaseException) -> Exception:
        endpoint = display_url(request.endpoint)
        if isinstance(exc, ConnectTimeout):
            return ModelTimeout(
                f"cannot connect to the model endpoint {endpoint} within "
                f"{self._connect_timeout_s:g} s; check that it is reachable from the gateway"
            )
        if isinstance(exc, ReadTimeout):
            return ModelTimeout(
                f"the model endpoint {endpoint} sent nothing for {self.timeout_s():g} s"
            )
        if isinstance(exc, DeadlineExceeded | TimeoutError):
            return ModelTimeout(
                f"the model endpoint {endpoint} did not answer within {self.timeout_s():g} s"
            )
        if isinstance(exc, ConnectFailed):
            if isinstance(exc.os_error, EgressRefused):
                return EndpointNotAllowed(
                    f"The model endpoint {endpoint} is not allowed: {exc.os_error}. Register the "
                    "model with the address of the model server itself (http or https)."
                )
            if isinstance(exc, NameNotResolved):
                return ModelUnreachable(
                    f"cannot resolve the host of the model endpoint {endpoint}; check the "
                    "endpoint URL and the gateway's DNS"
                )
            if isinstance(exc, TlsFailed):
                return ModelUnreachable(
                    f"TLS handshake with the model endpoint {endpoint} failed; check its "
                    "certificate (the gateway trusts the system CA store, or "
                    "ENCLAVE_GATEWAY__MODEL_CA_BUNDLE when set, or this endpoint's "
                    "ENCLAVE_GATEWAY__MODEL_TLS entry)"
                )
            return ModelUnreachable(
                f"cannot connect to the model endpoint {endpoint} "
                f"({connect_failure(exc.os_error)}); check that the "
                "model server is running and reachable from the gateway"
            )
        if isinstance(exc, Disconnected):
            return ModelServerError(f"the model endpoint {endpoint} closed the connection early")
        if isinstance(exc, TruncatedBody):
            return ModelServerError(f"the model endpoint {endpoint} sent a truncated response")
        if isinstance(exc, BadResponse):
            return self.bad_response(request, f"sent an unreadable answer ({exc})")
        if isinstance(exc, InvalidRequest):
            return ModelRequestRejected(
                f"the call to the model endpoint {endpoint} cannot be sent: {exc}"
            )
        return ModelUnreachable(
            f"the request to the model endpoint {endpoint} failed ({type(exc).__name__})"
        )

    # -- calls ------------------------------------------------------------------------------

    def _retry_wait(self, attempt: int, retry_after: str | None) -> float | None:
        """Seconds to wait before retry number ``attempt``; None when not to retry."""
        if attempt > self._retries:
            return None
        # Full jitter: replicas that failed together do not come back together.
        wait = random.uniform(0, self._backoff_s * (2 ** (attempt - 1)))  # noqa: S311
        if retry_after is not None:
            try:
                asked = float(retry_after)
            except ValueError:
                return None  # an HTTP date: the caller had better see it
            if asked > self._max_wait_s:
                return None
            wait = max(wait, asked)
        return min(wait, self._max_wait_s)

    async def _open(self, request: ModelRequest, stream: bool) -> Response:
        """POST the call; a 200 response (body unread), or the mapped error.

        Retried, bounded, only where nothing can have been generated yet: the connection
        failed, or the provider answered 429, 503 or 529 before any answer. The endpoint's
        circuit breaker sees the outcome of the whole call (one coroutine, not a wrapper
        around another: every await level is resumed at each step of the call).
        """
        breaker = self._breaker
        if breaker is not None:
            left = breaker.open_for(request.endpoint)
            if left is not None:
                raise ModelUnreachable(
                    f"the model endpoint {display_url(request.endpoint)} failed several times "
                    f"in a row; not calling it for another {left:.0f} s"
                )
        try:
            url, body, headers = self.build(request, stream)
            if self.authorize is not None:
                await self.authorize(request, headers)
            timeout = self._timeouts(stream)
            # Only when the endpoint has TLS of its own: a request-level ssl=True would override
            # the session's gateway-wide CA bundle.
            tls = self._tls_of(request)
            attempt = 0
            stale = 0
            while True:
                attempt += 1
                try:
                    # Redirects are never followed: the credentials go to this endpoint only.
                    response = await self._session.post(
                        url, body=body, headers=headers, timeouts=timeout, ssl_context=tls
                    )
                except HttpClientError as exc:
                    if stale_connection(exc) and stale < STALE_CONNECTION_RETRIES:
                        # A pooled connection the server had already closed (its keep-alive
                        # limit): at once, on another connection, and not one of the model's
                        # retries: several pooled connections can die together.
                        stale += 1
                        attempt -= 1
                        continue
                    error = self.transport_error(request, exc)
                    retry = isinstance(error, ModelUnreachable) and not isinstance(
                        exc, NameNotResolved | TlsFailed
                    )
                    wait = self._retry_wait(attempt, None) if retry else None
                    if wait is None:
                        raise error from None
                    await self._sleep(wait)
                    continue
                if response.status == 200:
                    if breaker is not None:
                        breaker.succeeded(request.endpoint)
                    return response
                try:
                    error_body = await response.content.read(MAX_ERROR_BODY_BYTES)
                except HttpClientError:
                    error_body = b""
                finally:
                    response.release()
                error = self.http_error(request, response.status, response.headers, error_body)
                wait = (
                    self._retry_wait(attempt, error.retry_after)
                    if isinstance(error, ModelRateLimited) or response.status in _RETRY_STATUSES
                    else None
                )
                if wait is None:
                    raise error
                await self._sleep(wait)
        except ModelError as exc:
            if breaker is not None and _trips_breaker(exc):
                breaker.failed(request.endpoint)
            raise

    async def complete(self, request: ModelRequest) -> ModelResult:
        response = await self._open(request, stream=False)
        try:
            raw = await response.read(MAX_RESPONSE_BYTES)  # the connection is free after it
        except ValueError:
            raise self.bad_response(request, "returned an oversized response") from None
        except HttpClientError as exc:
            raise self.transport_error(request, exc) from None
        return self.parse_result(request, self.load_json(request, raw))

    def load_json(self, request: ModelRequest, raw: bytes) -> Any:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise self.bad_response(request, "returned a response that is not JSON") from None

    async def stream(self, request: ModelRequest) -> TextStream:
        return ProviderStream(self, request, await self._open(request, stream=True))

    # -- listing and health -----------------------------------------------------------------

    def models_call(self, request: ModelRequest) -> tuple[str, dict[str, str]] | None:
        """URL and headers of the provider's model list; None when it has none at the endpoint
        (Bedrock and Vertex list models on another, control-plane, endpoint)."""
        return None

    async def list_models(self, request: ModelRequest) -> list[str]:
        """The model ids the endpoint serves (``data[].id``); just the request's model when
        the provider has no list at the endpoint."""
        call = self.models_call(request)
        if call is None:
            return [request.model]
        url, headers = call
        if self.authorize is not None:
            await self.authorize(request, headers)
        try:
            async with await self._session.get(
                url, headers=headers, timeouts=self._timeout, ssl_context=self._tls_of(request)
            ) as response:
                if response.status != 200:
                    body = await response.content.read(MAX_ERROR_BODY_BYTES)
                    raise self.http_error(request, response.status, response.headers, body)
                raw = await response.read(MAX_RESPONSE_BYTES)
        except ModelError:
            raise
        except ValueError:
            raise self.bad_response(request, "returned an oversized model list") from None
        except HttpClientError as exc:
            raise self.transport_error(request, exc) from None
        data = self.load_json(request, raw)
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise self.bad_response(request, "returned a model list without data")
        return [str(e["id"]) for e in entries if isinstance(e, dict) and e.get("id")]

    async def health(self, request: ModelRequest) -> None:
        """Raise the mapped :class:`ModelError` unless the model answers: its listing where
        the provider has one, else a one-token answer."""
        if self.models_call(request) is not None:
            await self.list_models(request)
            return
        probe = replace(
            request, api="chat", prompt=None, messages=(ChatMessage("user", "ping"),), max_tokens=1
        )
        await self.complete(probe)


class ProviderStream:
    """Text deltas of one streamed answer, with its finish reason and usage once known."""

    __slots__ = (
        "_finished",
        "_provider",
        "_request",
        "_response",
        "finish_reason",
        "tool_deltas",
        "usage",
    )

    def __init__(self, provider: HttpProvider, request: ModelRequest, response: Response) -> None:
        self._provider = provider
        self._request = request
        self._response = response
        self._finished = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        # Tool-call pieces not yet taken by the consumer (see TextStream).
        self.tool_deltas: list[ToolCallDelta] = []

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        provider, request = self._provider, self._request
        try:
            content_type = self._response.headers.get("Content-Type", "")
            if provider.stream_content_type not in content_type:
                # The server ignored "stream": relay its whole answer as one chunk.
                try:
                    raw = await self._response.read(MAX_RESPONSE_BYTES)
                except ValueError:
                    raise provider.bad_response(request, "returned an oversized response") from None
                result = provider.parse_result(request, provider.load_json(request, raw))
                self.finish_reason, self.usage = result.finish_reason, result.usage
                self._finished = True
                if result.text:
                    yield result.text
                if result.tool_calls:
                    self.tool_deltas.extend(
                        ToolCallDelta(i, call.id, call.name, call.arguments)
                        for i, call in enumerate(result.tool_calls)
                    )
                    yield ""
                return
            async for text in provider.deltas(request, self._response, self):
                if text or self.tool_deltas:
                    yield text
            self._finished = True
        except ModelError:
            raise
        except (ValueError, BadResponse):
            # A corrupt frame, or a line longer than the reader allows.
            raise provider.bad_response(request, "sent an unreadable stream") from None
        except HttpClientError as exc:
            raise provider.transport_error(request, exc) from None

    async def aclose(self) -> None:
        if self._finished:
            self._response.release()  # connection goes back to the pool
        else:
            # Abandoned mid-answer (client gone, error): drop the connection so the model
            # server notices and stops generating.
            self._response.close()

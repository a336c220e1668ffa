"""Client for OpenAI-compatible model servers (vLLM, Ollama, llama.cpp, LM Studio, TGI, ...).

Calls ``POST {endpoint}/completions`` (raw prompts, fill-in-the-middle) or
``POST {endpoint}/chat/completions`` (messages) over the gateway's one pooled aiohttp session,
either whole or streamed (server-sent events, relayed delta by delta). Failures become
:class:`ModelError` with a reason that names the endpoint and the cause and never the API key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import orjson

from enclave.common.logging import redact_text
from enclave.gateway.egress import EgressRefused, display_url
from enclave.gateway.http import connect_failure, read_limited
from enclave.gateway.models.base import (
    EndpointNotAllowed,
    ModelError,
    ModelRequest,
    ModelResult,
    TextStream,
    Usage,
)

MAX_RESPONSE_BYTES: Final = 8 * 1024 * 1024
_MAX_ERROR_BODY_BYTES: Final = 64 * 1024
_PATHS: Final = {"completions": "/completions", "chat": "/chat/completions"}


def _finish_reason(value: Any) -> str:
    # OpenAI says "length"; some servers say "max_tokens". Everything else ended on its own.
    return "length" if value in ("length", "max_tokens") else "stop"


def _usage(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    prompt, completion = data.get("prompt_tokens"), data.get("completion_tokens")
    if not isinstance(prompt, int) and not isinstance(completion, int):
        return None
    return Usage(
        input_tokens=prompt if isinstance(prompt, int) else 0,
        output_tokens=completion if isinstance(completion, int) else 0,
    )


def clean_error_message(message: Any, api_key: str | None) -> str:
    text = " ".join(str(message).split())[:300]
    if api_key and len(api_key) >= 6:
        text = text.replace(api_key, "[REDACTED]")
    return redact_text(text)


def upstream_error_message(body: bytes, api_key: str | None) -> str:
    """The human part of an error body (``{"error": {"message"}}`` and friends), redacted."""
    message: Any = None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        message = body.decode("utf-8", "replace")
    else:
        if isinstance(data, dict):
            error = data.get("error")
            if isinstance(error, dict):
                message = error.get("message")
            elif isinstance(error, str):
                message = error
            message = message or data.get("detail") or data.get("message")
        else:
            message = data
    return clean_error_message(message, api_key) if message else ""


class OpenAICompatClient:
    """:class:`~enclave.gateway.models.base.TextModelClient` for the OpenAI-compatible API."""

    def __init__(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        self._session = session
        self._timeout_s = timeout_s
        # Whole answers: one deadline. Streams: a deadline per read, so long answers may flow.
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout_s, sock_read=timeout_s
        )

    # -- request building -------------------------------------------------------------------

    @staticmethod
    def _payload(request: ModelRequest, stream: bool) -> bytes:
        payload: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "n": 1,
            "stream": stream,
        }
        if stream:
            # Ask for token counts in the final chunk (OpenAI, vLLM, Ollama and llama.cpp honour
            # it; servers that don't know the option ignore it) so streams report usage too.
            payload["stream_options"] = {"include_usage": True}
        if request.api == "completions":
            payload["prompt"] = request.prompt or ""
        else:
            payload["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if request.top_p is not None:
            payload["top_p"] = request.top_p
        if request.stop:
            payload["stop"] = list(request.stop)
        return orjson.dumps(payload)

    @staticmethod
    def _headers(request: ModelRequest, stream: bool) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
        }
        headers.update(request.extra_headers)
        if request.api_key:
            # Only ever sent to this request's own endpoint.
            headers["Authorization"] = f"Bearer {request.api_key}"
        return headers

    # -- error mapping ----------------------------------------------------------------------

    def _http_error(
        self, request: ModelRequest, status: int, headers: Any, body: bytes
    ) -> ModelError:
        error = self._http_error_reason(request, status, headers, body)
        error.upstream_status = status
        return error

    def _http_error_reason(
        self, request: ModelRequest, status: int, headers: Any, body: bytes
    ) -> ModelError:
        endpoint = display_url(request.endpoint)
        said = upstream_error_message(body, request.api_key)
        said = f": {said}" if said else ""
        if status in (401, 403):
            return ModelError(
                f"the model endpoint {endpoint} refused the API key (HTTP {status}); check the "
                "API key configured for this self-hosted model"
            )
        if status == 429:
            return ModelError(
                f"the model endpoint {endpoint} is rate limiting requests (HTTP 429); retry later",
                status=429,
                retry_after=headers.get("Retry-After"),
            )
        if status == 404:
            return ModelError(
                f"the model endpoint {endpoint} answered HTTP 404 for {_PATHS[request.api]}{said}; "
                "check that the endpoint URL is the API base (usually ending in /v1) and that "
                f"the model '{request.model}' is served there"
            )
        if 300 <= status < 400:
            return ModelError(
                f"the model endpoint {endpoint} answered with a redirect (HTTP {status}), which "
                "the gateway does not follow; register the URL it redirects to instead"
            )
        if 400 <= status < 500:
            return ModelError(
                f"the model endpoint {endpoint} rejected the request (HTTP {status}){said}"
            )
        return ModelError(f"the model endpoint {endpoint} failed (HTTP {status}){said}")

    def _transport_error(self, request: ModelRequest, exc: BaseException) -> Exception:
        endpoint = display_url(request.endpoint)
        if isinstance(exc, TimeoutError):
            return ModelError(
                f"the model endpoint {endpoint} did not answer within {self._timeout_s:g} s"
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            if isinstance(exc.os_error, EgressRefused):
                return EndpointNotAllowed(
                    f"The model endpoint {endpoint} is not allowed: {exc.os_error}. Register the "
                    "model with the address of the model server itself (http or https)."
                )
            if isinstance(exc, aiohttp.ClientConnectorDNSError):
                return ModelError(
                    f"cannot resolve the host of the model endpoint {endpoint}; check the "
                    "endpoint URL and the gateway's DNS"
                )
            if isinstance(exc, aiohttp.ClientSSLError):
                return ModelError(
                    f"TLS handshake with the model endpoint {endpoint} failed; check its "
                    "certificate (the gateway trusts the system CA store)"
                )
            return ModelError(
                f"cannot connect to the model endpoint {endpoint} "
                f"({connect_failure(exc.os_error)}); check that the "
                "model server is running and reachable from the gateway"
            )
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return ModelError(f"the model endpoint {endpoint} closed the connection early")
        if isinstance(exc, aiohttp.ClientPayloadError):
            return ModelError(f"the model endpoint {endpoint} sent a truncated response")
        if isinstance(exc, aiohttp.InvalidURL):
            return ModelError(f"the model endpoint URL {endpoint} is not valid")
        return ModelError(
            f"the request to the model endpoint {endpoint} failed ({type(exc).__name__})"
        )

    def _bad_response(self, request: ModelRequest, what: str) -> ModelError:
        return ModelError(
            f"the model endpoint {display_url(request.endpoint)} {what}; is it an "
            "OpenAI-compatible API base (usually ending in /v1)?"
        )

    def parse_result(self, request: ModelRequest, raw: bytes) -> ModelResult:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise self._bad_response(request, "returned a response that is not JSON") from None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._bad_response(request, "returned a response without choices")
        choice = choices[0]
        if request.api == "completions":
            text = choice.get("text")
        else:
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
        if text is not None and not isinstance(text, str):
            raise self._bad_response(request, "returned a choice whose text is not a string")
        return ModelResult(
            text=text or "",
            finish_reason=_finish_reason(choice.get("finish_reason")),
            usage=_usage(data.get("usage")),
        )

    # -- calls ------------------------------------------------------------------------------

    async def complete(self, request: ModelRequest) -> ModelResult:
        url = request.endpoint + _PATHS[request.api]
        try:
            async with self._session.post(
                url,
                data=self._payload(request, stream=False),
                headers=self._headers(request, stream=False),
                timeout=self._timeout,
                allow_redirects=False,  # the API key goes to this endpoint and nowhere else
            ) as response:
                if response.status != 200:
                    body = await response.content.read(_MAX_ERROR_BODY_BYTES)
                    raise self._http_error(request, response.status, response.headers, body)
                try:
                    raw = await read_limited(response, MAX_RESPONSE_BYTES)
                except ValueError:
                    raise self._bad_response(request, "returned an oversized response") from None
        except (ModelError, EndpointNotAllowed):
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._transport_error(request, exc) from None
        return self.parse_result(request, raw)

    async def stream(self, request: ModelRequest) -> TextStream:
        url = request.endpoint + _PATHS[request.api]
        try:
            response = await self._session.post(
                url,
                data=self._payload(request, stream=True),
                headers=self._headers(request, stream=True),
                timeout=self._stream_timeout,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._transport_error(request, exc) from None
        if response.status != 200:
            try:
                body = await response.content.read(_MAX_ERROR_BODY_BYTES)
            except (aiohttp.ClientError, TimeoutError, OSError):
                body = b""
            finally:
                response.release()
            raise self._http_error(request, response.status, response.headers, body)
        return _EventStream(self, request, response)


class _EventStream:
    """Text deltas parsed incrementally from an OpenAI server-sent-event stream."""

    def __init__(
        self, client: OpenAICompatClient, request: ModelRequest, response: aiohttp.ClientResponse
    ) -> None:
        self._client = client
        self._request = request
        self._response = response
        self._finished = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        request = self._request
        try:
            if "event-stream" not in self._response.headers.get("Content-Type", ""):
                # The server ignored "stream": relay its whole answer as one chunk.
                try:
                    raw = await read_limited(self._response, MAX_RESPONSE_BYTES)
                except ValueError:
                    raise self._client._bad_response(
                        request, "returned an oversized response"
                    ) from None
                result = self._client.parse_result(request, raw)
                self.finish_reason, self.usage = result.finish_reason, result.usage
                self._finished = True
                if result.text:
                    yield result.text
                return
            async for line in self._response.content:
                text = self._parse_line(line)
                if text is None:
                    self._finished = True
                    return
                if text:
                    yield text
            if self.finish_reason is None:
                # Neither [DONE] nor a finish_reason: the server went away mid-answer (a
                # connection closed without chunked framing ends the loop quietly).
                raise ModelError(
                    f"the model endpoint {display_url(request.endpoint)} ended its stream "
                    "before the answer was complete"
                )
            self._finished = True
        except ModelError:
            raise
        except ValueError:  # a line longer than the reader's buffer
            raise self._client._bad_response(request, "sent an unreadable event stream") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._client._transport_error(request, exc) from None

    def _parse_line(self, line: bytes) -> str | None:
        """The delta text of one SSE line; ``""`` for lines without text, None at ``[DONE]``."""
        line = line.strip()
        if not line.startswith(b"data:"):
            return ""  # blank separator, comment (":"), "event:", "id:" or "retry:"
        data = line[5:].strip()
        if data == b"[DONE]":
            return None
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise self._client._bad_response(
                self._request, "sent an event that is not JSON"
            ) from None
        if not isinstance(event, dict):
            return ""
        if event.get("error"):
            said = upstream_error_message(data, self._request.api_key)
            raise ModelError(
                f"the model endpoint {display_url(self._request.endpoint)} failed while "
                f"streaming: {said}"
            )
        usage = _usage(event.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return ""
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = _finish_reason(choice["finish_reason"])
        if self._request.api == "completions":
            text = choice.get("text")
        else:
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
        return text if isinstance(text, str) else ""

    async def aclose(self) -> None:
        if self._finished:
            self._response.release()  # connection goes back to the pool
        else:
            # Abandoned mid-answer (client gone, error): drop the connection so the model
            # server notices and stops generating.
            self._response.close()

"""The interface every model client implements, and the errors they raise.

A client turns a :class:`ModelRequest` (already rendered prompt, sampling parameters, where to
send it) into text, either whole (:meth:`TextModelClient.complete`) or as a stream of text
deltas (:meth:`TextModelClient.stream`). Clients know nothing about GitLab's wire format.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Api = Literal["completions", "chat"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model asked for: ``arguments`` is its JSON text, as OpenAI's."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call (OpenAI's ``delta.tool_calls[]``): the first piece of
    call ``index`` carries its id and name, the others fragments of its arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call: a name, what it does, its JSON-schema parameters."""

    name: str
    description: str | None
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str  # system, user, assistant, tool
    content: str
    # An assistant turn's calls, and the call a "tool" turn answers (with its function name,
    # which Gemini wants).
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(slots=True)
class ModelRequest:
    """One model call. ``prompt`` for the completions API, ``messages`` for the chat API.

    Treat it as immutable: a changed call is a copy (``dataclasses.replace``). It is not
    declared frozen because a frozen dataclass's ``__init__`` sets each of these 23 fields
    through ``object.__setattr__``: 2.2 µs per request against 0.5 (bench/README.md).
    """

    endpoint: str  # base URL, e.g. http://model-host:8000/v1 (no trailing slash)
    model: str
    api: Api
    api_key: str | None = None
    prompt: str | None = None
    messages: Sequence[ChatMessage] = ()
    max_tokens: int = 128
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    extra_headers: dict[str, str] = field(default_factory=dict)
    family: str = "other"  # model family, for metrics only (a bounded label)
    # Which provider module serves the call (a key of enclave.gateway.models.providers):
    # "openai", "anthropic", "azure", "bedrock" or "vertex_ai".
    provider: str = "openai"
    # Sampling options some providers have (OpenAI-compatible and Gemini); others ignore them.
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # Functions the model may call, and whether it must: "auto", "none", "required", or
    # "function" with ``tool_name`` the one it must call.
    tools: Sequence[Tool] = ()
    tool_choice: str | None = None
    tool_name: str | None = None
    parallel_tool_calls: bool | None = None  # False: at most one call per answer
    # An OpenAI API body as the client sent it (checked by the gateway): OpenAI-compatible
    # providers send it as is (model, stream and stream options set by the provider), so
    # every field the server knows passes through; the others use the fields above.
    openai_body: Mapping[str, Any] | None = None


# The model-call limit the instance gave this request (enclave.common.timeouts), set by the
# gateway's authentication step for the instance's tokens only; None: gateway.model_timeout_s.
REQUEST_MODEL_TIMEOUT: ContextVar[float | None] = ContextVar(
    "enclave_request_model_timeout", default=None
)


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ModelResult:
    text: str
    finish_reason: str  # "stop", "length", or "tool_calls" when the model called tools
    usage: Usage | None  # None when the model server reports none
    tool_calls: tuple[ToolCall, ...] = ()


class ModelError(Exception):
    """A model call failed. ``status`` is what the gateway answers (503, or 429 passed through).

    ``reason`` is safe to show to the caller: it names the endpoint and the cause, never the
    API key. ``upstream_status`` is the model server's HTTP status when it answered with one
    (None when it could not be reached or its answer was unusable).
    """

    def __init__(
        self,
        reason: str,
        status: int = 503,
        retry_after: str | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.upstream_status = upstream_status


# One class per kind of upstream failure, so every provider reports the same failure the same
# way; all are ModelErrors, which every endpoint already maps (503, or 429 passed through).


class ModelUnreachable(ModelError):
    """No connection: refused, DNS, TLS, network unreachable."""


class ModelTimeout(ModelError):
    """Connecting, the first byte or the whole answer took longer than allowed."""


class ModelAuthRefused(ModelError):
    """The provider refused the credentials (HTTP 401/403)."""


class ModelNotFound(ModelError):
    """The provider does not know the model, deployment or path (HTTP 404)."""


class ModelRateLimited(ModelError):
    """The provider is rate limiting (HTTP 429, or a throttling error); status 429."""


class ContextTooLong(ModelError):
    """The prompt does not fit the model's context window."""


class ModelBadResponse(ModelError):
    """The provider's answer could not be understood (not JSON, wrong shape, garbage stream)."""


class ModelServerError(ModelError):
    """The provider failed (HTTP 5xx) or cut the answer short."""


class ModelRequestRejected(ModelError):
    """The provider rejected the request (another HTTP 4xx, or a redirect)."""


class EndpointNotAllowed(Exception):
    """The model endpoint is one the gateway never calls (see :mod:`enclave.gateway.egress`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TextStream(Protocol):
    """Text deltas of one streamed answer; must be closed (also when abandoned early).

    Streams of requests with ``tools`` may also produce tool-call pieces: they are appended to
    the stream's ``tool_deltas`` list and announced by an empty text delta (text consumers
    skip empty deltas, so the text path is unchanged).
    """

    def __aiter__(self) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...


class TextModelClient(Protocol):
    """What the endpoints need from a model provider."""

    async def complete(self, request: ModelRequest) -> ModelResult:
        """The whole answer. Raises :class:`ModelError` or :class:`EndpointNotAllowed`."""
        ...

    async def stream(self, request: ModelRequest) -> TextStream:
        """Start a streamed answer.

        Errors that happen before the first byte (connection, HTTP status) raise here, so the
        endpoint can still answer with a proper status; later failures raise from iteration.
        """
        ...


@runtime_checkable
class ModelCatalog(Protocol):
    """What a provider offers beyond answers: its model list and a health probe."""

    async def list_models(self, request: ModelRequest) -> list[str]: ...

    async def health(self, request: ModelRequest) -> None: ...

"""Client for Amazon Bedrock's Converse API (``/model/{modelId}/converse`` and ``-stream``).

Wire format: Amazon Bedrock API reference, "Converse" and "ConverseStream" (Runtime): messages
of ``content[{text}]`` blocks, ``system[{text}]``, ``inferenceConfig{maxTokens, temperature,
topP, stopSequences}``; the answer is ``output.message.content[]`` with ``stopReason`` and
``usage{inputTokens, outputTokens}``. A stream is ``application/vnd.amazon.eventstream``
binary frames (decoded with botocore's ``EventStreamBuffer``) whose ``:event-type`` is
``messageStart``, ``contentBlockStart`` (``start.toolUse{toolUseId, name}`` begins a tool call),
``contentBlockDelta`` (``delta.text``, or ``delta.toolUse.input``: a piece of the call's
arguments), ``contentBlockStop``, ``messageStop`` (``stopReason``) or ``metadata``
(``usage``), or exceptions (``:message-type: exception``). Tools: ``toolConfig{tools[{toolSpec{
name, description, inputSchema{json}}}], toolChoice{auto|any|tool}}``, ``toolUse`` and
``toolResult`` content blocks, ``stopReason: tool_use``.

Requests are signed locally with SigV4 (botocore's ``SigV4Auth``, service ``bedrock``) using
the model's key ``ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]`` or the gateway's
environment (``AWS_ACCESS_KEY_ID`` …); a key without a colon (or ``AWS_BEARER_TOKEN_BEDROCK``)
is a Bedrock API key, sent as a bearer token. Only the model's endpoint is called: the runtime
endpoint of its region, or a configured VPC endpoint; credentials are never looked up over the
network (no instance metadata).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any, Final
from urllib.parse import quote, urlsplit

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer, ParserError
from yarl import URL

from enclave.common.http1 import Response
from enclave.gateway.egress import display_url
from enclave.gateway.models.anthropic import tool_arguments, visible_stops
from enclave.gateway.models.base import (
    ChatMessage,
    ModelAuthRefused,
    ModelError,
    ModelRateLimited,
    ModelRequest,
    ModelResult,
    ModelServerError,
    ToolCall,
    ToolCallDelta,
)
from enclave.gateway.models.http_provider import (
    Call,
    HttpProvider,
    ProviderStream,
    clean_error_message,
    finish_reason,
    usage_of,
)
from enclave.gateway.models.providers import bedrock_region

SERVICE: Final = "bedrock"
_EVENTSTREAM: Final = "application/vnd.amazon.eventstream"
# bedrock-runtime[-fips].<region>.amazonaws.com, and VPC endpoints
# vpce-….bedrock-runtime.<region>.vpce.amazonaws.com
_HOST_REGION: Final = re.compile(
    r"bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.(?:vpce\.)?amazonaws\.com"
)
# x-amzn-ErrorType (and stream exception types) → the failure kinds of HttpProvider.classify.
_ERROR_KINDS: Final = {
    "throttlingexception": "throttling",
    "servicequotaexceededexception": "throttling",
    "modelnotreadyexception": "throttling",
    "accessdeniedexception": "auth",
    "unrecognizedclientexception": "auth",
    "invalidsignatureexception": "auth",
    "expiredtokenexception": "auth",
    "resourcenotfoundexception": "not_found",
    "modeltimeoutexception": "timeout",
}


def _error_type(value: str | None) -> str:
    # "ValidationException:http://internal.amazon.com/coral/…" → "validationexception"
    return (value or "").split(":", 1)[0].strip().lower()


def _content(message: ChatMessage) -> list[dict[str, Any]]:
    """A turn's Converse content blocks: text, ``toolUse`` calls, or a ``toolResult``."""
    if message.role == "tool":
        result = {"toolUseId": message.tool_call_id, "content": [{"text": message.content}]}
        return [{"toolResult": result}]
    blocks: list[dict[str, Any]] = [{"text": message.content}]
    if message.tool_calls:
        if not message.content:
            blocks = []  # Converse refuses empty text blocks
        blocks.extend(
            {
                "toolUse": {
                    "toolUseId": call.id,
                    "name": call.name,
                    "input": tool_arguments(call.arguments),
                }
            }
            for call in message.tool_calls
        )
    return blocks


def bedrock_messages(request: ModelRequest) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """``(system, messages)`` in Converse's shape: user/assistant turns alternating."""
    if request.api == "completions":
        return [], [{"role": "user", "content": [{"text": request.prompt or ""}]}]
    system: list[dict[str, str]] = []
    turns: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == "system":
            system.append({"text": message.content})
            continue
        role = "assistant" if message.role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(_content(message))
        else:
            turns.append({"role": role, "content": _content(message)})
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"text": "."}]})
    return system, turns


def bedrock_tools(request: ModelRequest, messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Converse's ``toolConfig``; None without tools.

    Converse has no "none" choice: the tools are left out then, unless the conversation holds
    tool blocks (Converse wants the tools defined for those), where the model may choose.
    """
    if not request.tools:
        return None
    choice = request.tool_choice
    if choice == "none" and not any(
        "toolUse" in block or "toolResult" in block
        for message in messages
        for block in message["content"]
    ):
        return None
    tools = []
    for tool in request.tools:
        spec: dict[str, Any] = {"name": tool.name, "inputSchema": {"json": tool.parameters}}
        if tool.description:
            spec["description"] = tool.description
        tools.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": tools}
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif choice == "function":
        config["toolChoice"] = {"tool": {"name": request.tool_name}}
    return config


class BedrockClient(HttpProvider):
    """:class:`~enclave.gateway.models.base.TextModelClient` for Amazon Bedrock (Converse)."""

    stream_content_type = _EVENTSTREAM
    credential_name = "the AWS credentials"
    credential_hint = (
        "check the model's key (ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN] or a Bedrock "
        "API key) or the gateway's AWS_* environment, and the IAM permission "
        "bedrock:InvokeModel for this model"
    )
    api_hint = "is it a Bedrock runtime endpoint (https://bedrock-runtime.<region>.amazonaws.com)?"

    def __init__(self, *args: Any, region: str | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._region = region

    # -- signing ----------------------------------------------------------------------------

    def _region_of(self, request: ModelRequest) -> str:
        host = urlsplit(request.endpoint).hostname or ""
        match = _HOST_REGION.search(host)
        region = match.group(1) if match else (self._region or bedrock_region(request.model))
        if not region:
            raise ModelError(
                f"no AWS region to sign requests to {display_url(request.endpoint)}: set "
                "ENCLAVE_GATEWAY__BEDROCK_REGION (or AWS_REGION) on the gateway"
            )
        return region

    @staticmethod
    def _credentials(request: ModelRequest) -> Credentials | str:
        """SigV4 credentials, or a Bedrock API key (bearer token)."""
        key = request.api_key
        if key:
            parts = key.split(":")
            if len(parts) == 1:
                return key
            if len(parts) in (2, 3) and all(parts):
                return Credentials(*parts)
            raise ModelAuthRefused(
                "the AWS credentials of this Bedrock model are malformed; give them as "
                "ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN] or a Bedrock API key"
            )
        access, secret = (
            os.environ.get("AWS_ACCESS_KEY_ID"),
            os.environ.get("AWS_SECRET_ACCESS_KEY"),
        )
        if access and secret:
            return Credentials(access, secret, os.environ.get("AWS_SESSION_TOKEN") or None)
        bearer = os.environ.get("AWS_BEARER_TOKEN_BEDROCK")
        if bearer:
            return bearer
        raise ModelAuthRefused(
            "no AWS credentials for this Bedrock model: register its key as "
            "ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN] or set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY for the gateway"
        )

    def secret(self, request: ModelRequest) -> str | None:
        key = request.api_key
        if key and ":" in key:
            return key.split(":")[1]  # the secret access key, never shown
        return key

    # -- the call ---------------------------------------------------------------------------

    def build(self, request: ModelRequest, stream: bool) -> Call:
        system, messages = bedrock_messages(request)
        config: dict[str, Any] = {"maxTokens": request.max_tokens}
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.top_p is not None:
            config["topP"] = request.top_p
        # Claude on Bedrock refuses whitespace-only stops, as Anthropic's API does.
        stops = visible_stops(request) if "claude" in request.model else list(request.stop)
        if stops:
            config["stopSequences"] = stops
        payload: dict[str, Any] = {"messages": messages, "inferenceConfig": config}
        if system:
            payload["system"] = system
        if request.tools:
            tool_config = bedrock_tools(request, messages)
            if tool_config is not None:
                payload["toolConfig"] = tool_config
        body = orjson.dumps(payload)
        # Model ids may be ARNs (":" and "/"): encoded once in the URL; SigV4 encodes the path
        # again for the signature, as AWS expects for every service but S3.
        operation = "converse-stream" if stream else "converse"
        url = f"{request.endpoint}/model/{quote(request.model, safe='')}/{operation}"
        headers = {
            "Content-Type": "application/json",
            "Accept": _EVENTSTREAM if stream else "application/json",
        }
        headers.update(request.extra_headers)
        credentials = self._credentials(request)
        if isinstance(credentials, str):
            headers["Authorization"] = f"Bearer {credentials}"
        else:
            signed = AWSRequest(method="POST", url=url, data=body, headers=headers)
            SigV4Auth(credentials, SERVICE, self._region_of(request)).add_auth(signed)
            headers = dict(signed.headers.items())
        return URL(url, encoded=True), body, headers

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> str | None:
        kind = _error_type(headers.get("x-amzn-ErrorType"))
        if not kind:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                return None
            kind = _error_type(data.get("__type") if isinstance(data, dict) else None)
        return _ERROR_KINDS.get(kind.rsplit("#", 1)[-1])

    def not_found(self, request: ModelRequest, said: str) -> str:
        return (
            f"{said}; check the model id '{request.model}' (on-demand ids of newer models need "
            "an inference profile such as us.<model-id>) and the region"
        )

    def parse_result(self, request: ModelRequest, data: Any) -> ModelResult:
        output = data.get("output") if isinstance(data, dict) else None
        message = output.get("message") if isinstance(output, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            raise self.bad_response(request, "returned an answer without output.message")
        texts, calls = [], []
        for block in content:
            if not isinstance(block, dict):
                continue
            if isinstance(block.get("text"), str):
                texts.append(block["text"])
            use = block.get("toolUse")
            if isinstance(use, dict) and isinstance(use.get("name"), str):
                arguments = orjson.dumps(use.get("input") or {}).decode()
                calls.append(ToolCall(str(use.get("toolUseId") or ""), use["name"], arguments))
        return ModelResult(
            text="".join(texts),
            finish_reason=finish_reason(data.get("stopReason")),
            usage=usage_of(data.get("usage"), "inputTokens", "outputTokens"),
            tool_calls=tuple(calls),
        )

    async def deltas(
        self, request: ModelRequest, response: Response, stream: ProviderStream
    ) -> AsyncIterator[str]:
        buffer = EventStreamBuffer()
        blocks: dict[Any, int] = {}  # content block index -> tool call index
        async with aclosing(response.content.chunks()) as chunks:
            async for chunk in chunks:
                buffer.add_data(chunk)
                try:
                    messages = list(buffer)
                except ParserError:
                    raise self.bad_response(request, "sent a corrupt event-stream frame") from None
                for message in messages:
                    text = self._event(request, message.headers, message.payload, stream, blocks)
                    if text is None:
                        return
                    if text or stream.tool_deltas:
                        yield text

    def _event(
        self,
        request: ModelRequest,
        headers: Mapping[str, Any],
        payload: bytes,
        stream: ProviderStream,
        blocks: dict[Any, int],
    ) -> str | None:
        """The text of one frame; "" for frames without text, None at ``messageStop``'s end."""
        try:
            data = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError:
            raise self.bad_response(request, "sent an event that is not JSON") from None
        if not isinstance(data, dict):
            return ""
        if headers.get(":message-type") != "event":
            kind = str(headers.get(":exception-type") or headers.get(":error-code") or "error")
            said = clean_error_message(
                data.get("message") or data.get("Message") or kind, self.secret(request)
            )
            endpoint = display_url(request.endpoint)
            if _ERROR_KINDS.get(kind.lower()) == "throttling":
                raise ModelRateLimited(
                    f"the model endpoint {endpoint} is rate limiting requests ({kind}); retry "
                    "later",
                    status=429,
                )
            raise ModelServerError(
                f"the model endpoint {endpoint} failed while streaming ({kind}): {said}"
            )
        event = headers.get(":event-type")
        if event == "contentBlockDelta":
            delta = data.get("delta")
            if not isinstance(delta, dict):
                return ""
            use = delta.get("toolUse")
            if isinstance(use, dict):  # a piece of a tool call's arguments (JSON text)
                index = blocks.get(data.get("contentBlockIndex"))
                piece = use.get("input")
                if index is not None and isinstance(piece, str) and piece:
                    stream.tool_deltas.append(ToolCallDelta(index, arguments=piece))
                return ""
            text = delta.get("text")
            return text if isinstance(text, str) else ""
        if event == "contentBlockStart":
            start = data.get("start")
            use = start.get("toolUse") if isinstance(start, dict) else None
            if isinstance(use, dict):  # a tool call begins: its id and name
                index = blocks[data.get("contentBlockIndex")] = len(blocks)
                call_id, name = use.get("toolUseId"), use.get("name")
                stream.tool_deltas.append(ToolCallDelta(index, str(call_id), str(name)))
            return ""
        if event == "messageStop":
            stream.finish_reason = finish_reason(data.get("stopReason"))
        elif event == "metadata":
            usage = usage_of(data.get("usage"), "inputTokens", "outputTokens")
            if usage is not None:
                stream.usage = usage
            return None  # the last frame: usage comes after messageStop
        return ""

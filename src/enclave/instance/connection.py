""" "Test connection" for a self-hosted model, as GitLab does it (gitlab-instance.md §1.5).

The instance asks the gateway to call the model: ``POST <gateway>/v1/prompts/
model_configuration%2Fcheck`` (15 s) with an instance token for ``complete_code`` and a body of
``stream: false``, empty ``inputs`` and ``model_metadata`` {name = family, endpoint, api_key,
provider ``openai``, identifier}. 200 means the model answered. 421 means the gateway reached
the model and the model failed; ``detail`` then starts with the model's HTTP status. For a 404
of a ``custom_openai/…`` model the instance itself asks the model server's ``<endpoint>/models``
(5 s, bearer API key) which names it serves and suggests them as identifiers.

Every outcome is a :class:`ConnectionResult` whose message says what failed and what to do;
the API key never appears in it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import orjson

from enclave.common.http1 import HttpClientError
from enclave.common.logging import get_logger, redact_text
from enclave.instance.db.models import SelfHostedModel
from enclave.instance.gateway_client import (
    ForwardIdentity,
    GatewayClient,
    GatewayUnavailableError,
    gateway_headers,
)
from enclave.instance.registry import IDENTIFIER_PREFIXES, decrypt_api_token
from enclave.instance.secrets import SecretBox
from enclave.instance.tokens import TokenMinter

log = get_logger(__name__)

CHECK_PATH = "/v1/prompts/model_configuration%2Fcheck"
CHECK_TIMEOUT_S = 15.0
MODELS_TIMEOUT_S = 5.0
MAX_SUGGESTIONS = 5
CHECK_UNIT_PRIMITIVE = "complete_code"
_LEADING_STATUS = re.compile(r"^\s*(?:HTTP\s*)?(\d{3})\b")
_ANY_STATUS = re.compile(r"\b(?:status(?: code)?|code|HTTP)[\s:=]*(\d{3})\b", re.IGNORECASE)


@dataclass(frozen=True)
class ModelUnderTest:
    name: str
    family: str
    provider: str
    endpoint: str | None
    identifier: str | None
    api_key: str | None = field(repr=False)


def saved_model_under_test(box: SecretBox, model: SelfHostedModel) -> ModelUnderTest:
    """A registered model as the check sees it, its API key decrypted."""
    return ModelUnderTest(
        name=model.name,
        family=model.family,
        provider=model.provider,
        endpoint=model.endpoint,
        identifier=model.identifier,
        api_key=decrypt_api_token(box, model),
    )


@dataclass(frozen=True)
class ConnectionResult:
    success: bool
    # ok | model_error | model_unreachable | gateway_error | gateway_unreachable
    result: str
    message: str
    gateway_status: int | None = None
    model_status: int | None = None
    suggested_identifiers: list[str] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return asdict(self)


def check_body(model: ModelUnderTest) -> dict[str, Any]:
    return {
        "stream": False,
        "inputs": {},
        "model_metadata": {
            "name": model.family,
            "endpoint": model.endpoint,
            "api_key": model.api_key,
            "provider": "openai",
            "identifier": model.identifier,
        },
    }


def _detail_text(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")[:500]
    if isinstance(data, dict):
        for key in ("detail", "error", "message"):
            if key in data:
                value = data[key]
                return value if isinstance(value, str) else orjson.dumps(value).decode()
    return orjson.dumps(data).decode()[:500]


def model_status_of(detail: str) -> int | None:
    match = _LEADING_STATUS.match(detail) or _ANY_STATUS.search(detail)
    if match is None:
        return None
    status = int(match.group(1))
    return status if 100 <= status <= 599 else None


def _clean(text: str, model: ModelUnderTest) -> str:
    """Never echo the key, even if a model server puts it into its error."""
    if model.api_key:
        text = text.replace(model.api_key, "[REDACTED]")
    return redact_text(text)


async def suggest_identifiers(model: ModelUnderTest) -> list[str]:
    """``custom_openai/<id>`` for each model the server lists at ``<endpoint>/models``."""
    if model.endpoint is None or model.provider != "api":
        return []
    headers = {"Accept": "application/json"}
    if model.api_key:
        headers["Authorization"] = f"Bearer {model.api_key}"
    try:
        async with (
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=MODELS_TIMEOUT_S), trust_env=False
            ) as session,
            session.get(
                f"{model.endpoint.rstrip('/')}/models", headers=headers, allow_redirects=False
            ) as response,
        ):
            if response.status != 200:
                return []
            data = orjson.loads(await response.read())
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, ValueError):
        return []
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return []
    prefix = IDENTIFIER_PREFIXES["api"]
    names = [e["id"] for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
    return [prefix + name for name in names[:MAX_SUGGESTIONS]]


async def check_connection(
    client: GatewayClient,
    minter: TokenMinter,
    identity: ForwardIdentity,
    model: ModelUnderTest,
    *,
    base_url: str | None = None,
) -> ConnectionResult:
    """Ask the gateway to call ``model`` and explain the outcome."""
    gateway = (base_url or client.base_url).rstrip("/")
    token = minter.token([CHECK_UNIT_PRIMITIVE]).token
    try:
        response = await client.post(
            CHECK_PATH,
            orjson.dumps(check_body(model)),
            gateway_headers(token, identity),
            base_url=gateway,
            timeout_s=CHECK_TIMEOUT_S,
        )
    except GatewayUnavailableError as exc:
        return ConnectionResult(False, "gateway_unreachable", exc.message)
    try:
        body = await response.read()  # the connection is handed back (or closed) either way
    except (HttpClientError, ValueError) as exc:
        return ConnectionResult(
            False,
            "gateway_unreachable",
            f"the AI gateway at {gateway} broke off its answer ({type(exc).__name__}); check "
            "its logs",
        )
    status = response.status
    where = model.endpoint or f"the {model.provider} service"
    if status == 200:
        return ConnectionResult(
            True,
            "ok",
            f"Successfully connected to the self-hosted model {model.name!r} at {where} "
            f"through the AI gateway {gateway}",
            gateway_status=200,
        )
    detail = _clean(_detail_text(body), model)
    if status == 421:
        return await _model_failure(model, detail, where)
    if status in (401, 403):
        return ConnectionResult(
            False,
            "gateway_error",
            f"the AI gateway at {gateway} refused the instance's token ({status}: {detail}). "
            "Check that the gateway trusts this instance (its issuer URL) and can fetch this "
            "instance's keys from /oauth/discovery/keys",
            gateway_status=status,
        )
    if status in (404, 405):
        return ConnectionResult(
            False,
            "gateway_error",
            f"the AI gateway at {gateway} has no {CHECK_PATH} endpoint ({status}); check that "
            "the AI gateway URL points at an AI gateway, and update the gateway",
            gateway_status=status,
        )
    return ConnectionResult(
        False,
        "gateway_error",
        f"AI Gateway returned code {status}: {detail}",
        gateway_status=status,
    )


async def _model_failure(model: ModelUnderTest, detail: str, where: str) -> ConnectionResult:
    model_status = model_status_of(detail)
    if model_status is None:
        return ConnectionResult(
            False,
            "model_unreachable",
            f"the AI gateway could not connect to the model endpoint {where}: {detail}. Check "
            "the endpoint URL, that the model server is running, and that the gateway may "
            "reach it (gateway.model_egress_allow)",
            gateway_status=421,
        )
    if model_status in (401, 403):
        message = (
            f"the model server at {where} refused the API key ({model_status} from the model: "
            f"{detail}). Set the model's api_token to a key the server accepts"
        )
        return ConnectionResult(False, "model_error", message, 421, model_status)
    if model_status == 404:
        suggestions = (
            await suggest_identifiers(model)
            if (model.identifier or "").startswith(IDENTIFIER_PREFIXES["api"])
            else []
        )
        message = (
            f"the model server at {where} does not serve a model named by the identifier "
            f"{model.identifier!r} (404 from the model: {detail})"
        )
        if suggestions:
            message += f". It serves: {', '.join(suggestions)}; use one of them as identifier"
        else:
            message += ". Check the identifier (custom_openai/<served-model-name>) and endpoint"
        return ConnectionResult(False, "model_error", message, 421, model_status, suggestions)
    return ConnectionResult(
        False,
        "model_error",
        f"the model at {where} failed with HTTP {model_status}: {detail}",
        421,
        model_status,
    )

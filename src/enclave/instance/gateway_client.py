"""The instance's HTTP client towards the AI gateway.

One pooled :class:`~enclave.common.http1.Http1Client` per process (created in the app
lifespan): keep-alive connections to the gateway are what keeps the added latency near a
millisecond (DESIGN.md §5), and the lean client costs about half of aiohttp's CPU per call.
Requests carry GitLab's Cloud Connector headers (``shared/reference/gitlab-instance.md`` §3.3).

Timeouts: connecting is bounded separately (a dead gateway should fail fast), and reading is
bounded per read rather than in total, so a long streamed answer is fine as long as the
gateway keeps sending.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

import yarl

from enclave.common import timeouts, wire
from enclave.common.http1 import (
    ConnectFailed,
    Disconnected,
    Http1Client,
    HttpClientError,
    Response,
    Timeouts,
)
from enclave.common.logging import get_logger

log = get_logger(__name__)

CONNECT_TIMEOUT_S = 10.0
POOL_LIMIT = 256
# Below uvicorn's keep-alive timeout (5 s), so the gateway never closes a connection the pool
# is about to reuse.
KEEPALIVE_S = 4.0
# Fresh tries when a pooled connection turns out closed before the gateway answered.
STALE_RETRIES = 2


class GatewayUnavailableError(Exception):
    """The gateway could not be reached or did not answer; ``status`` is 502 or 504."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# Every forwarded request names its user: remembered per user (bounded), not an HMAC each time.
@functools.lru_cache(maxsize=65536)
def pseudonymous_user_id(salt: bytes, user_id: int) -> str:
    """X-Gitlab-Global-User-Id: a stable per-instance pseudonym (HMAC-SHA256), never the id."""
    return hmac.new(salt, str(user_id).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ForwardIdentity:
    """Who a forwarded request is for, as the gateway headers describe it."""

    instance_id: str
    host_name: str
    global_user_id: str
    request_id: str


def host_name(url: str) -> str:
    return urlsplit(url).hostname or ""


def gateway_headers(
    token: str,
    identity: ForwardIdentity,
    *,
    verbose_ai_logs: bool | None = None,
    version: str = wire.INSTANCE_VERSION,
    unit_primitive: str | None = None,
) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {token}",
        "X-Gitlab-Authentication-Type": wire.AUTH_TYPE_OIDC,
        "X-Gitlab-Instance-Id": identity.instance_id,
        "X-Gitlab-Realm": wire.REALM_SELF_MANAGED,
        "X-Gitlab-Global-User-Id": identity.global_user_id,
        "X-Gitlab-Host-Name": identity.host_name,
        "X-Gitlab-Version": version,
        "X-Request-ID": identity.request_id,
        "Content-Type": "application/json",
    }
    if verbose_ai_logs is not None:
        headers["X-Gitlab-Enabled-Instance-Verbose-Ai-Logs"] = str(verbose_ai_logs).lower()
    if unit_primitive is not None:  # GitLab 18: what the request is for (the gateway logs it)
        headers["X-Gitlab-Unit-Primitive"] = unit_primitive
    return headers


@functools.lru_cache(maxsize=64)
def _read_timeout(timeout_s: float) -> Timeouts:
    """The timeouts of a request with ``timeout_s`` (one object per value, not per request)."""
    return Timeouts(connect=min(CONNECT_TIMEOUT_S, timeout_s), read=timeout_s)


class GatewayClient:
    """Posts to the gateway over a shared connection pool."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._session: Http1Client | None = None

    async def start(self) -> None:
        # No proxies and no cookies (one client serves every user: nothing may carry over
        # between their requests). The headers are the ones GitLab-style gateways have always
        # seen from the instance (no Accept-Encoding: gateways answer uncompressed, so the
        # bytes are relayed untouched and streamed chunks never wait for a compressor).
        if self._session is None:
            self._session = Http1Client(
                headers={"Accept": "*/*"},
                max_connections=POOL_LIMIT,
                keepalive_s=KEEPALIVE_S,
                ask_identity=False,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str],
        *,
        base_url: str | None = None,
        timeout_s: float | None = None,
    ) -> Response:
        """POST ``body`` to ``<gateway>/<path>`` and return the response with headers read.

        ``base_url`` and ``timeout_s`` override the configured ones for this request (the
        administrator's AI settings, read per request). ``path`` is sent as given: encoded
        characters such as ``%2F`` stay encoded. The caller reads the body and must release
        the response. Transport failures become :class:`GatewayUnavailableError` with a
        message that says what to check.
        """
        if self._session is None:
            raise RuntimeError("GatewayClient.start() was not called")
        base = (base_url or self.base_url).rstrip("/")
        timeout = timeout_s or self.timeout_s
        url = f"{base}{path}"
        # The gateway's model call follows this request's timeout (enclave.common.timeouts).
        headers = {**headers, timeouts.HEADER: f"{timeouts.model_budget(timeout):g}"}
        try:
            return await self._post(yarl.URL(url, encoded=True), body, headers, timeout)
        except TimeoutError as exc:
            log.warning("gateway_timeout", url=url, error=type(exc).__name__)
            raise GatewayUnavailableError(
                504,
                f"the AI gateway at {base} did not answer within "
                f"{timeout:g} s. Check the gateway and model server logs; for slow models "
                "raise the AI gateway timeout (admin AI settings, 60-600 s).",
            ) from exc
        except ConnectFailed as exc:
            log.warning("gateway_unreachable", url=url, error=str(exc.os_error or exc))
            raise GatewayUnavailableError(
                502,
                f"could not connect to the AI gateway at {base}. Check that the gateway "
                "is running and that the AI gateway URL (admin AI settings, or "
                "ENCLAVE_GATEWAY_URL) points to it.",
            ) from exc
        except HttpClientError as exc:
            log.warning("gateway_connection_failed", url=url, error=type(exc).__name__)
            raise GatewayUnavailableError(
                502,
                f"the connection to the AI gateway at {base} failed "
                f"({type(exc).__name__}). Check the gateway logs.",
            ) from exc

    async def _post(
        self, url: yarl.URL, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> Response:
        """The POST, sent again on a fresh connection when a pooled one turns out closed
        before the gateway answered (nothing was processed then). Redirects are not
        followed: the request's credentials go to the gateway only."""
        assert self._session is not None
        stale = 0
        while True:
            try:
                return await self._session.post(
                    url, body=body, headers=headers, timeouts=_read_timeout(timeout_s)
                )
            except Disconnected as exc:
                if not exc.reused or stale >= STALE_RETRIES:
                    raise
                stale += 1

    async def get(self, url: str, timeout_s: float) -> int:
        """GET an absolute URL (health checks); the status, or raises the client's errors."""
        if self._session is None:
            raise RuntimeError("GatewayClient.start() was not called")
        response = await self._session.get(
            url, headers={}, timeouts=Timeouts(connect=timeout_s, total=timeout_s)
        )
        await response.read()
        return response.status

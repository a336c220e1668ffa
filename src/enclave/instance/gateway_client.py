"""The instance's HTTP client towards the AI gateway.

One pooled :class:`aiohttp.ClientSession` per process (created in the app lifespan): keep-alive
connections to the gateway are what keeps the added latency near a millisecond (DESIGN.md §5).
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

import aiohttp
import yarl

from enclave.common import timeouts, wire
from enclave.common.logging import get_logger

log = get_logger(__name__)

CONNECT_TIMEOUT_S = 10.0
POOL_LIMIT = 256


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
def _read_timeout(timeout_s: float) -> aiohttp.ClientTimeout:
    """The timeouts of a request with ``timeout_s`` (one object per value, not per request)."""
    return aiohttp.ClientTimeout(
        total=None, sock_connect=min(CONNECT_TIMEOUT_S, timeout_s), sock_read=timeout_s
    )


class GatewayClient:
    """Posts to the gateway over a shared connection pool."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=POOL_LIMIT, enable_cleanup_closed=True),
                timeout=_read_timeout(self.timeout_s),
                # No proxies from the environment: the instance talks to its gateway only.
                trust_env=False,
                # One session serves every user: no cookie may carry over between their
                # requests (and the jar's per-request filtering is work for nothing).
                cookie_jar=aiohttp.DummyCookieJar(),
                # Relay bytes as the gateway sent them: ask for no compression (loopback or LAN,
                # small bodies, and streamed chunks must not wait for a compressor) and never
                # decompress, so status, body and content type pass through untouched.
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
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
    ) -> aiohttp.ClientResponse:
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
        options: dict[str, object] = {}
        if timeout_s is not None:
            options["timeout"] = _read_timeout(timeout)
        # The gateway's model call follows this request's timeout (enclave.common.timeouts).
        headers = {**headers, timeouts.HEADER: f"{timeouts.model_budget(timeout):g}"}
        try:
            return await self._session.post(
                yarl.URL(url, encoded=True),
                data=body,
                headers=headers,
                allow_redirects=False,
                **options,  # type: ignore[arg-type]
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            log.warning("gateway_timeout", url=url, error=type(exc).__name__)
            raise GatewayUnavailableError(
                504,
                f"the AI gateway at {base} did not answer within "
                f"{timeout:g} s. Check the gateway and model server logs; for slow models "
                "raise the AI gateway timeout (admin AI settings, 60-600 s).",
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            log.warning("gateway_unreachable", url=url, error=str(exc.os_error or exc))
            raise GatewayUnavailableError(
                502,
                f"could not connect to the AI gateway at {base}. Check that the gateway "
                "is running and that the AI gateway URL (admin AI settings, or "
                "ENCLAVE_GATEWAY_URL) points to it.",
            ) from exc
        except aiohttp.ClientError as exc:
            log.warning("gateway_connection_failed", url=url, error=type(exc).__name__)
            raise GatewayUnavailableError(
                502,
                f"the connection to the AI gateway at {base} failed "
                f"({type(exc).__name__}). Check the gateway logs.",
            ) from exc

    async def get(self, url: str, timeout_s: float) -> int:
        """GET an absolute URL (health checks); the status, or raises aiohttp errors."""
        if self._session is None:
            raise RuntimeError("GatewayClient.start() was not called")
        async with self._session.get(
            url, timeout=aiohttp.ClientTimeout(total=timeout_s), allow_redirects=False
        ) as response:
            await response.read()
            return response.status

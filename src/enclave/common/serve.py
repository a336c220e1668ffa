"""Run an ASGI application with uvicorn (uvloop + httptools), logging through our JSON pipeline."""

from __future__ import annotations

from typing import Any

import uvicorn

from enclave.common.http_limits import HeaderLimits
from enclave.common.server_protocol import lean_protocol
from enclave.config import GatewaySettings, InstanceSettings


def header_limits(settings: InstanceSettings | GatewaySettings) -> HeaderLimits:
    """A role's head limits; the 431 names its settings and uses its error shape (GitLab's
    ``{"message"}`` on the instance, the AI gateway's ``{"detail"}``)."""
    role = "instance" if isinstance(settings, InstanceSettings) else "gateway"
    prefix = f"ENCLAVE_{role.upper()}__"
    return HeaderLimits(
        settings.max_header_bytes,
        settings.max_headers,
        "message" if role == "instance" else "detail",
        bytes_setting=prefix + "MAX_HEADER_BYTES",
        count_setting=prefix + "MAX_HEADERS",
    )


def serve(
    app: Any,
    host: str,
    port: int,
    *,
    limits: HeaderLimits,
    workers: int = 1,
    factory: bool = False,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, refusing request heads over ``limits`` with 431.

    With ``workers > 1`` uvicorn needs an import string: pass ``"module:function"`` together
    with ``factory=True``.
    """
    uvicorn.run(
        app,
        host=host,
        port=port,
        workers=workers if workers > 1 else None,
        factory=factory,
        loop="uvloop",
        # Our own protocol on httptools, with bounds on the request head (server_protocol.py).
        http=lean_protocol(limits),
        log_config=None,  # logging is configured already (enclave.common.logging)
        access_log=False,  # each app writes its own structured request line
        # Never let uvicorn rewrite the client address from X-Forwarded-For: the apps honour
        # that header only from configured trusted proxies (enclave.common.netrules).
        proxy_headers=False,
        server_header=False,  # no software banner for scanners
        # HTTP requires a Date on every answer of a server with a clock (RFC 9110 §6.6.1);
        # uvicorn renders it once a second, so it costs a header line, not a clock read.
        date_header=True,
        timeout_graceful_shutdown=5,
    )

"""Run an ASGI application with uvicorn (uvloop + httptools), logging through our JSON pipeline."""

from __future__ import annotations

from typing import Any

import uvicorn


def serve(app: Any, host: str, port: int, workers: int = 1, factory: bool = False) -> None:
    """Serve ``app`` until SIGINT/SIGTERM.

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
        http="httptools",
        log_config=None,  # logging is configured already (enclave.common.logging)
        access_log=False,  # each app writes its own structured request line
        # Never let uvicorn rewrite the client address from X-Forwarded-For: the apps honour
        # that header only from configured trusted proxies (enclave.common.netrules).
        proxy_headers=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=5,
    )

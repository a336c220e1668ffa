"""Which tenant and feature the request being served counts against (shared-gateway mode).

Set by :func:`enclave.gateway.tenants.choose_target`; read by the instrumented model client
when a model call starts, so tokens are counted per tenant without passing the tenant through
every provider. A context variable: each request runs in its own task and context.
"""

from __future__ import annotations

from contextvars import ContextVar

USAGE_KEY: ContextVar[tuple[str, str] | None] = ContextVar("enclave_usage_key", default=None)

"""TLS towards model endpoints: verification always on, a CA bundle and a client certificate
gateway-wide (``model_ca_bundle``, ``model_client_cert``) and per endpoint (``model_tls``).

Built once at start-up from files on the gateway; a request only looks its endpoint's origin
up in a dict, and only when per-endpoint entries exist.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from enclave.config import GatewaySettings, tls_origin


class TLSSetupError(RuntimeError):
    """A configured CA bundle or client certificate cannot be loaded (says which setting)."""


def tls_context(
    ca_bundle: Path | None, client_cert: Path | None, client_key: Path | None, setting: str
) -> ssl.SSLContext:
    """A verifying client context with ``ca_bundle`` (else the system CAs) and the certificate."""
    try:
        context = ssl.create_default_context(cafile=ca_bundle)
        if client_cert is not None:
            context.load_cert_chain(client_cert, client_key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"{setting}: cannot load the CA bundle or certificate: {exc}") from None
    return context


def default_tls(settings: GatewaySettings) -> ssl.SSLContext:
    """The gateway-wide TLS for model calls (the system CAs and no client certificate, unless
    set)."""
    if settings.model_ca_bundle is None and settings.model_client_cert is None:
        return ssl.create_default_context()
    return tls_context(
        settings.model_ca_bundle,
        settings.model_client_cert,
        settings.model_client_key,
        "ENCLAVE_GATEWAY__MODEL_CA_BUNDLE / __MODEL_CLIENT_CERT",
    )


def endpoint_tls(settings: GatewaySettings) -> dict[str, ssl.SSLContext]:
    """One context per ``model_tls`` origin; what an entry leaves unset is the gateway-wide."""
    contexts: dict[str, ssl.SSLContext] = {}
    for origin, tls in settings.model_tls.items():
        cert = tls.client_cert or settings.model_client_cert
        key = tls.client_key if tls.client_cert is not None else settings.model_client_key
        contexts[origin] = tls_context(
            tls.ca_bundle or settings.model_ca_bundle, cert, key, f"model_tls[{origin!r}]"
        )
    return contexts


@lru_cache(maxsize=1024)
def _origin(endpoint: str) -> str:
    return tls_origin(endpoint)


def context_for(contexts: Mapping[str, ssl.SSLContext], endpoint: str) -> ssl.SSLContext | None:
    """The per-endpoint context for ``endpoint``, or None (the session's default applies)."""
    if not contexts or not endpoint.startswith("https"):
        return None
    return contexts.get(_origin(endpoint))

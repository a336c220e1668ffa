"""A tiny fake token issuer (a GitLab instance's OIDC side) for the benchmark.

The bench generates an RSA key, publishes its public half as a JWKS behind OIDC discovery
(``/.well-known/openid-configuration`` → ``jwks_uri``) and mints RS256 tokens the way a
GitLab instance does for its AI gateway (:func:`mint_token`) and the way Enclave's instance
does for one user of the gateway's OpenAI-compatible API (:func:`mint_openai_token`, claim
``enclave_surface: openai``). With ``--routes`` and ``--routes-secret-file`` it also serves the
instance's feature→model table at ``GET /api/v4/internal/ai/gateway_routes`` (see
:func:`routes_document`) to the caller presenting the secret as ``Authorization: Bearer``.
Run as a process::

    python bench/issuer.py --port 18080 --jwks /tmp/jwks.json \
        [--routes /tmp/routes.json --routes-secret-file /tmp/routes.secret]

It serves only those documents, on loopback, until SIGTERM.
"""

from __future__ import annotations

import argparse
import hmac
import json
import signal
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

AUDIENCE: Final = "gitlab-ai-gateway"
REALM: Final = "self-managed"
JWKS_PATH: Final = "/oauth/discovery/keys"
ROUTES_PATH: Final = "/api/v4/internal/ai/gateway_routes"
# The claim that marks a token for the OpenAI-compatible API (instance/api/openai_access.py).
SURFACE_CLAIM: Final = "enclave_surface"
SURFACE_OPENAI: Final = "openai"


def new_signing_key() -> tuple[rsa.RSAPrivateKey, str]:
    """A fresh 2048-bit RSA key and its key id."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048), uuid.uuid4().hex[:16]


def jwks(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    """The JWKS publishing the public half of ``key``."""
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return {"keys": [jwk]}


def mint_token(
    key: rsa.RSAPrivateKey,
    kid: str,
    issuer: str,
    instance_id: str,
    scopes: tuple[str, ...] = ("complete_code",),
    lifetime_s: int = 3600,
) -> str:
    """An RS256 token with the claims a GitLab instance puts in its AI gateway tokens."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": instance_id,
        "aud": AUDIENCE,
        "gitlab_realm": REALM,
        "gitlab_instance_id": instance_id,
        "scopes": list(scopes),
        "iat": now,
        "nbf": now - 5,
        "exp": now + lifetime_s,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def mint_openai_token(
    key: rsa.RSAPrivateKey,
    kid: str,
    issuer: str,
    instance_id: str,
    user_id: str,
    scopes: tuple[str, ...] = ("complete_code",),
    lifetime_s: int = 3600,
) -> str:
    """An RS256 token for one user of the gateway's OpenAI-compatible API.

    The claims of ``mint_openai_token`` in ``enclave/instance/api/openai_access.py``: ``sub`` is
    the user's pseudonymous id, ``scopes`` the unit primitives of the features served, and
    ``enclave_surface: openai``, without which the gateway refuses the token there.
    """
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": user_id,
        "gitlab_instance_id": instance_id,
        "aud": AUDIENCE,
        "gitlab_realm": REALM,
        "scopes": sorted(set(scopes)),
        SURFACE_CLAIM: SURFACE_OPENAI,
        "iat": now,
        "nbf": now - 5,
        "exp": now + lifetime_s,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid, "typ": "JWT"})


def routes_document(
    issuer: str, endpoint: str, served_model: str, api_key: str, family: str = "codestral"
) -> dict[str, Any]:
    """The instance's feature→model table (``GET /api/v4/internal/ai/gateway_routes``).

    ``code_completions`` is served by the OpenAI-compatible server at ``endpoint`` (its API
    base, ``.../v1``) under the name ``served_model``; ``duo_chat`` is unassigned, so the table
    carries an unavailable entry too, as a real instance's does.
    """
    return {
        "version": 1,
        "issuer": issuer,
        "routes": [
            {
                "feature": "code_completions",
                "unit_primitive": "complete_code",
                "available": True,
                "model": {
                    "name": served_model,
                    "family": family,
                    "provider": "api",
                    "endpoint": endpoint,
                    "identifier": f"custom_openai/{served_model}",
                    "api_key": api_key,
                },
            },
            {
                "feature": "duo_chat",
                "unit_primitive": "duo_chat",
                "available": False,
                "reason": "unassigned",
                "message": "No self-hosted model is assigned to GitLab Duo Chat.",
            },
        ],
    }


def _handler(
    discovery: bytes, keys: bytes, routes: bytes | None, secret: str | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/.well-known/openid-configuration":
                body = discovery
            elif self.path == JWKS_PATH:
                body = keys
            elif self.path == ROUTES_PATH and routes is not None and secret is not None:
                # Like the instance: only for the caller presenting the shared secret.
                scheme, _, presented = (self.headers.get("Authorization") or "").partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(
                    presented.strip().encode(), secret.encode()
                ):
                    self.send_error(401)
                    return
                body = routes
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake OIDC issuer for the benchmark.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jwks", type=Path, required=True, help="JWKS file to publish")
    parser.add_argument("--routes", type=Path, help="gateway routes document (JSON) to serve")
    parser.add_argument(
        "--routes-secret-file", type=Path, help="secret the gateway must present for --routes"
    )
    args = parser.parse_args(argv)
    routes = args.routes.read_bytes() if args.routes else None
    secret = args.routes_secret_file.read_text().strip() if args.routes_secret_file else None
    issuer = f"http://127.0.0.1:{args.port}"
    discovery = json.dumps(
        {
            "issuer": issuer,
            "jwks_uri": issuer + JWKS_PATH,
            "id_token_signing_alg_values_supported": ["RS256"],
        }
    ).encode()
    server = ThreadingHTTPServer(
        ("127.0.0.1", args.port), _handler(discovery, args.jwks.read_bytes(), routes, secret)
    )

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

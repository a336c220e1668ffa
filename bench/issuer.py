"""A tiny fake token issuer (a GitLab instance's OIDC side) for the benchmark.

The bench generates an RSA key, publishes its public half as a JWKS behind OIDC discovery
(``/.well-known/openid-configuration`` → ``jwks_uri``) and mints one RS256 token the way a
GitLab instance does for its AI gateway. Run as a process::

    python bench/issuer.py --port 18080 --jwks /tmp/jwks.json

It serves only those two documents, on loopback, until SIGTERM.
"""

from __future__ import annotations

import argparse
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


def _handler(discovery: bytes, keys: bytes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/.well-known/openid-configuration":
                body = discovery
            elif self.path == JWKS_PATH:
                body = keys
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
    args = parser.parse_args(argv)
    issuer = f"http://127.0.0.1:{args.port}"
    discovery = json.dumps(
        {
            "issuer": issuer,
            "jwks_uri": issuer + JWKS_PATH,
            "id_token_signing_alg_values_supported": ["RS256"],
        }
    ).encode()
    server = ThreadingHTTPServer(
        ("127.0.0.1", args.port), _handler(discovery, args.jwks.read_bytes())
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

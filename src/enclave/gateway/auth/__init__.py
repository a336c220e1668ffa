"""Token verification: the JWKS key cache and the per-request checks."""

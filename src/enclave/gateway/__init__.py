"""The AI gateway (data plane): verifies instance-issued JWTs, renders prompts, calls models.

Layout follows GitLab's AI gateway, domain first:

* :mod:`enclave.gateway.app` — ``create_app`` / ``create_app_from_env`` and the lifespan;
* :mod:`enclave.gateway.auth` — JWKS key cache (``jwks``), the strict token parser (``jws``),
  request verification (``verify``) and the gateway's own key and user tokens
  (``self_signed``, for ``/v1/code/user_access_token``);
* :mod:`enclave.gateway.api` — the HTTP endpoints, by API version;
* :mod:`enclave.gateway.prompts` — the prompt registry (YAML/Jinja definitions per prompt id
  and model family) and the post-processing of answers;
* :mod:`enclave.gateway.models` — model clients behind one small interface;
* :mod:`enclave.gateway.egress` — which model endpoints the gateway may call;
* (address rules live in :mod:`enclave.common.netrules`, shared with the settings);
* :mod:`enclave.gateway.middleware` — request context and the client address allow-list.
"""

"""The instance (control plane): users, personal access tokens, the model registry, signing keys.

It authenticates IDE requests with personal access tokens, picks the self-hosted model for the
feature, mints a short-lived JWT (DESIGN.md §3) and forwards the request to the AI gateway with
GitLab's body and headers. Module map:

* :mod:`~enclave.instance.db` — SQLAlchemy models, engine, migrations runner.
* :mod:`~enclave.instance.files` — private (0600/0700) file helpers for secrets on disk.
* :mod:`~enclave.instance.secrets` — AES-256-GCM for model API keys at rest.
* :mod:`~enclave.instance.keys` — signing keys and the public JWKS.
* :mod:`~enclave.instance.tokens` — JWT minting with a per-scope-set cache.
* :mod:`~enclave.instance.pats` — personal access tokens: create, authenticate.
* :mod:`~enclave.instance.features` — the feature catalogue, family matrix, resolution.
* :mod:`~enclave.instance.registry` — self-hosted models: validation, create/update/delete.
* :mod:`~enclave.instance.feature_settings` — setting and listing features.
* :mod:`~enclave.instance.ai_settings` — gateway URL, timeout, verbose AI logs.
* :mod:`~enclave.instance.accounts` — users and personal access tokens (admin side).
* :mod:`~enclave.instance.connection` — "test connection" through the gateway.
* :mod:`~enclave.instance.secret_rotation` — re-encrypting API keys with a new secret key.
* :mod:`~enclave.instance.doctor` — end-to-end checks of a setup (``enclave doctor``).
* :mod:`~enclave.instance.code_suggestions` — intent detection and the gateway request body.
* :mod:`~enclave.instance.gateway_client` — the pooled HTTP client towards the AI gateway.
* :mod:`~enclave.instance.audit` / :mod:`~enclave.instance.audit_views` — audit events.
* :mod:`~enclave.instance.bootstrap` — first-start / every-start initialisation.
* :mod:`~enclave.instance.app` — the FastAPI application; routes live in :mod:`.api`.
"""

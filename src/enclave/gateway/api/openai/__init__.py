"""An OpenAI-compatible API over the instance's governed models.

``GET /v1/models``, ``GET /v1/models/{model}``, ``POST /v1/chat/completions`` and
``POST /v1/completions``, for the official ``openai`` client, Continue and other OpenAI tools.
Model ids are AI feature names (``duo_chat``, ``code_completions``, ``code_generations``, ...):
each is served by the self-hosted model the instance assigns to that feature (see
:mod:`enclave.gateway.routes_table`), and a token may use a feature only when it holds the
feature's unit primitive. Tokens come from the instance's
``POST /api/v4/ai/openai/direct_access``. Shared machinery is in :mod:`.common`.
"""

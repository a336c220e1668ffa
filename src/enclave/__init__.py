"""Enclave: self-hosted AI coding features on your own models.

The package is split by role, following GitLab Duo Self-Hosted's architecture:

* :mod:`enclave.instance` — the control plane: users, personal access tokens, the model
  registry, signing keys; it mints a short-lived JWT for every request it forwards.
* :mod:`enclave.gateway` — the data plane: verifies those JWTs against the instance's JWKS,
  builds prompts per model family and calls the models.
* :mod:`enclave.model` — the embedded default model (llama.cpp's OpenAI-compatible server).
* :mod:`enclave.common` — pieces all roles share (settings, logging, wire constants).
"""

__version__ = "0.1.0"

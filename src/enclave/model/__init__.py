"""The embedded default model: llama.cpp's own OpenAI-compatible server, in process.

* :mod:`enclave.model.server` — :class:`EmbeddedModelServer`, a thin wrapper around the
  ``xllamacpp`` wheel's ``Server`` (loopback, API key, offline, no web UI).
* :mod:`enclave.model.runner` — ``enclave model``: settings in, server running until a signal.
* :mod:`enclave.model.bundled` — where the bundled SmolLM2-135M-Instruct GGUF lives.
* :mod:`enclave.model.api_key` — the model's API key, a generated 0600 file in the data dir.
* :mod:`enclave.model.requant` — optional one-time Q4_1 -> Q8_0 conversion of the bundled model.
* :mod:`enclave.model.tiny_gguf` — a tiny deterministic GGUF for tests.

``xllamacpp`` (llama.cpp) is imported only when a server starts, so the instance and the
gateway can use the helpers (the API key, the tiny model) without loading it.
"""

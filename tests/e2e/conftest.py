"""End-to-end fixtures: the real ``enclave`` processes on free loopback ports.

The stack runs exactly as ``enclave up`` runs it (same supervisor, one process per role), with a
temporary data dir and the tiny deterministic GGUF model, so tests can assert exact text.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from enclave.common.net import free_port
from enclave.model.tiny_gguf import TINY_ANSWER, write_tiny_gguf
from enclave.supervisor import Plan, ensure_routes_secret, make_plan, start_all, stop_all


@dataclass
class Stack:
    plan: Plan
    data_dir: Path
    env: dict[str, str]

    @property
    def instance_url(self) -> str:
        return self.plan.instance_url

    @property
    def gateway_url(self) -> str:
        return self.plan.gateway_url

    @property
    def model_url(self) -> str:
        return self.plan.model_url

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token.txt").read_text().strip()

    @property
    def model_api_key(self) -> str:
        return (self.data_dir / "model" / "api-key").read_text().strip()


class FakeLoop:
    """An event loop in a thread of the test process, for the fakes (vendor APIs) a stack calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def read_lines(stream: Any, out: queue.Queue[str]) -> None:
    """Copy a process's output into ``out`` line by line (run it in a daemon thread)."""
    for line in iter(stream.readline, ""):
        out.put(line)


def stack_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update({"ENCLAVE_DATA_DIR": str(data_dir), "ENCLAVE_MODEL__THREADS": "1"})
    return env


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def expected_answer() -> str:
    return TINY_ANSWER


def gateway_body(stack: Stack) -> dict[str, Any]:
    """A completion request as GitLab's instance sends it to the gateway, for the embedded model."""
    return {
        "current_file": {
            "file_name": "calc.py",
            "content_above_cursor": "def add(a, b):\n    ",
            "content_below_cursor": "",
        },
        "prompt_version": 2,
        "prompt": "",
        "stream": False,
        "model_provider": "litellm",
        "model_name": "general",
        "model_endpoint": stack.model_url,
        "model_api_key": stack.model_api_key,
        "model_identifier": "custom_openai/smollm2",
    }


def ide_body() -> dict[str, Any]:
    """A completion request as an IDE sends it with direct access: no model fields (the
    gateway uses the model the administrator assigned to code completions)."""
    return {
        "current_file": {
            "file_name": "calc.py",
            "content_above_cursor": "def add(a, b):\n    ",
            "content_below_cursor": "",
        },
        "prompt_version": 2,
        "prompt": "",
        "stream": False,
    }


@contextmanager
def running_stack(data_dir: Path, gguf: Path, **extra_env: str) -> Iterator[Stack]:
    """The three roles, as ``enclave up`` runs them, on free ports with their own data dir.

    As ``enclave up`` does, the instance and the gateway share the routes secret: the gateway
    reads the feature→model routes (OpenAI-compatible API, direct access).
    """
    env = {**stack_env(data_dir), **extra_env}
    plan = make_plan(
        instance_host="127.0.0.1",
        instance_port=free_port(),
        gateway_host="127.0.0.1",
        gateway_port=free_port(),
        gguf=gguf,
        routes_secret_file=ensure_routes_secret(data_dir / "keys" / "gateway-routes.secret"),
    )
    start_all(plan, data_dir / "logs", lambda role, elapsed: None, env=env)
    try:
        yield Stack(plan, data_dir, env)
    finally:
        stop_all(plan)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("enclave-data"), tiny_gguf) as shared:
        yield shared

"""Finding 1: every command finds the stack `enclave up` runs (data/stack.json), flags and
ENCLAVE_* still win, and the record wins over a config file whose ports `up` overrode."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave.config import load_settings
from enclave.stack import StackRecord, mark_stopped, read_stack, stack_file, write_stack


def record(**fields: object) -> StackRecord:
    values: dict[str, object] = {
        "instance_host": "127.0.0.1",
        "instance_port": 18080,
        "instance_url": "http://127.0.0.1:18080",
        "gateway_host": "127.0.0.1",
        "gateway_port": 15052,
        "gateway_url": "http://127.0.0.1:15052",
        "model_port": 18090,
        "model_url": "http://127.0.0.1:18090/v1",
        "model_file": None,
        "pid": os.getpid(),
        "started_at": "2026-12-04T00:00:00+00:00",
        **fields,
    }
    return StackRecord(**values)  # type: ignore[arg-type]


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in list(os.environ):
        if name.startswith("ENCLAVE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ENCLAVE_DATA_DIR", str(tmp_path / "data"))
    yield tmp_path / "data"


def test_the_record_round_trips_and_a_broken_one_is_ignored(data_dir: Path) -> None:
    written = record()
    write_stack(data_dir, written)
    assert read_stack(data_dir) == written
    assert written.supervisor_alive()
    mark_stopped(data_dir, written)
    stopped = read_stack(data_dir)
    assert stopped is not None and stopped.state == "stopped" and not stopped.supervisor_alive()
    stack_file(data_dir).write_text('{"version": 1, "instance_port": "x"}')
    assert read_stack(data_dir) is None
    stack_file(data_dir).write_text("not json")
    assert read_stack(data_dir) is None


def test_commands_use_the_recorded_stack(data_dir: Path) -> None:
    write_stack(data_dir, record())
    settings = load_settings(stack=True)
    assert settings.instance.port == 18080
    assert settings.instance.issuer() == "http://127.0.0.1:18080"
    assert settings.instance.gateway_url == "http://127.0.0.1:15052"
    assert settings.instance.embedded_model_endpoint == "http://127.0.0.1:18090/v1"
    assert settings.gateway.issuer_url == "http://127.0.0.1:18080"
    assert settings.model.port == 18090
    # Roles (and anything not asking for the stack) keep their own configuration.
    plain = load_settings()
    assert (plain.instance.port, plain.instance.gateway_url) == (8080, "http://127.0.0.1:5052")


def test_environment_wins_over_the_record(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_stack(data_dir, record())
    monkeypatch.setenv("ENCLAVE_INSTANCE__GATEWAY_URL", "http://127.0.0.1:7777")
    settings = load_settings(stack=True)
    assert settings.instance.gateway_url == "http://127.0.0.1:7777"
    assert settings.instance.port == 18080  # the rest still comes from the record


def test_the_record_wins_over_the_config_file(data_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "enclave.toml"
    config.write_text("[instance]\nport = 9100\n\n[gateway]\nport = 9200\n")
    write_stack(data_dir, record())
    settings = load_settings(config, stack=True)
    assert (settings.instance.port, settings.gateway.port) == (18080, 15052)
    assert load_settings(config).instance.port == 9100  # no record asked for: the file's


def test_a_stopped_or_dead_stack_is_not_used(data_dir: Path) -> None:
    mark_stopped(data_dir, record())
    assert load_settings(stack=True).instance.port == 8080
    # Killed without marking: its pid is gone.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    write_stack(data_dir, record(pid=int(gone.stdout)))
    assert load_settings(stack=True).instance.port == 8080

"""Issue 13, findings 1-3, with the real processes: `enclave --config file.toml up` binds the
file's ports (2); `status`, `doctor`, `models test` and `settings show`, run afterwards with
nothing but the data dir, talk to that stack and not to 8080/5052 (1); the embedded model keeps
its port across restarts, and when that port is taken the stored endpoint follows the new one
(3)."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from enclave.common.net import free_port
from enclave.instance.bootstrap import EMBEDDED_MODEL_NAME
from enclave.stack import read_stack
from tests.e2e.conftest import read_lines, stack_env

# Three `enclave up` runs on a shared 2-core machine: generous, but bounded.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

START_TIMEOUT_S = 240


class Up:
    """`enclave up` in the background, its output collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "enclave", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(
            target=read_lines, args=(self.process.stdout, self._lines), daemon=True
        ).start()

    @property
    def text(self) -> str:
        return "".join(self.output)

    def wait_up(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Press Ctrl-C to stop" not in self.text:
            assert time.monotonic() < deadline, self.text
            assert self.process.poll() is None, self.text
            try:
                self.output.append(self._lines.get(timeout=1))
            except queue.Empty:
                continue
        return self.text

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            finally:
                if self.process.poll() is None:
                    self.process.kill()
        while not self._lines.empty():
            self.output.append(self._lines.get())


def enclave(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enclave", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def as_json(env: dict[str, str], *args: str) -> Any:
    result = enclave(env, *args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def embedded_endpoint(env: dict[str, str]) -> str:
    [model] = [m for m in as_json(env, "models", "list") if m["name"] == EMBEDDED_MODEL_NAME]
    return str(model["endpoint"])


def test_commands_find_the_stack_up_started_from_a_config_file(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    data_dir = tmp_path / "data"
    instance_port, gateway_port = free_port(), free_port()
    config = tmp_path / "enclave.toml"
    config.write_text(f"[instance]\nport = {instance_port}\n\n[gateway]\nport = {gateway_port}\n")
    env = stack_env(data_dir)
    instance_url = f"http://127.0.0.1:{instance_port}"
    gateway_url = f"http://127.0.0.1:{gateway_port}"

    up = Up(["--config", str(config), "up", "--gguf", str(tiny_gguf)], env)
    try:
        text = up.wait_up()
        # Finding 2: the file's ports, not 8080 / 5052.
        assert f"instance   {instance_url}" in text and f"gateway    {gateway_url}" in text
        model_port = int((data_dir / "model" / "port").read_text())

        # Finding 1: later commands see only the data dir (no --config, no ENCLAVE_*_PORT).
        status = as_json(env, "status")
        urls = {role["role"]: role["url"] for role in status["roles"]}
        assert urls == {
            "instance": instance_url,
            "gateway": gateway_url,
            "model": f"http://127.0.0.1:{model_port}/v1",
        }
        assert status["healthy"] and status["supervisor"]["running"]
        human = enclave(env, "status")
        assert human.returncode == 0 and f"ok   gateway   {gateway_url}" in human.stdout

        settings = as_json(env, "settings", "show")
        assert settings["ai_gateway_url"] == gateway_url

        tested = as_json(env, "models", "test", EMBEDDED_MODEL_NAME)
        assert tested["success"], tested

        doctor = enclave(env, "doctor", "--json")
        report = json.loads(doctor.stdout)
        assert doctor.returncode == 0, report
        assert report["ok"]
        assert ":8080" not in doctor.stdout and ":5052" not in doctor.stdout

        # Flags and ENCLAVE_* still win over the record.
        elsewhere = {**env, "ENCLAVE_INSTANCE__GATEWAY_URL": f"http://127.0.0.1:{free_port()}"}
        assert enclave(elsewhere, "status").returncode == 1
    finally:
        up.stop()
    assert up.process.returncode == 0, up.text
    record = read_stack(data_dir)
    assert record is not None and record.state == "stopped"

    # Finding 3: the model comes back on its port; the stored endpoint is unchanged.
    up = Up(["--config", str(config), "up", "--gguf", str(tiny_gguf)], env)
    try:
        up.wait_up()
        assert int((data_dir / "model" / "port").read_text()) == model_port
        assert embedded_endpoint(env) == f"http://127.0.0.1:{model_port}/v1"
    finally:
        up.stop()

    # ... and when another program took that port, the new one is stored and the model answers.
    with socket.socket() as squatter:
        # SO_REUSEADDR: the last run's connections may linger in TIME_WAIT on that port.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", model_port))
        squatter.listen()
        up = Up(["--config", str(config), "up", "--gguf", str(tiny_gguf)], env)
        try:
            up.wait_up()
            new_port = int((data_dir / "model" / "port").read_text())
            assert new_port != model_port
            assert embedded_endpoint(env) == f"http://127.0.0.1:{new_port}/v1"
            assert as_json(env, "models", "test", EMBEDDED_MODEL_NAME)["success"]
        finally:
            up.stop()

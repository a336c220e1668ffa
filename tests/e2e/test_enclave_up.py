"""The first README command, as a new user runs it: `enclave up`, then the printed curl."""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from enclave.common.net import free_port
from tests.e2e.conftest import read_lines, stack_env

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_enclave_up_prints_a_curl_that_answers(
    tmp_path: Path, tiny_gguf: Path, expected_answer: str
) -> None:
    data_dir = tmp_path / "data"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "enclave", "up",
            "--instance-port", str(free_port()),
            "--gateway-port", str(free_port()),
            "--gguf", str(tiny_gguf),
        ],
        env=stack_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
    output: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while not any("Press Ctrl-C to stop" in line for line in output):
            assert time.monotonic() < deadline, "".join(output)
            assert process.poll() is None, "".join(output)
            try:
                output.append(lines.get(timeout=1))
            except queue.Empty:
                continue
        text = "".join(output)
        assert "Enclave is up" in text
        token_file = data_dir / "admin-token.txt"
        assert str(token_file) in text
        assert token_file.stat().st_mode & 0o777 == 0o600

        curl = text[text.index("curl -s") : text.index("Press Ctrl-C")].strip()
        result = subprocess.run(
            ["bash", "-c", curl], capture_output=True, text=True, timeout=60, check=True
        )
        answer = json.loads(result.stdout)
        assert answer["choices"][0]["text"] == expected_answer
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    while not lines.empty():
        output.append(lines.get())
    assert process.returncode == 0, "".join(output)
    assert "Stopped." in "".join(output)

"""When parts fail under `enclave up`: a model killed mid-stream, a gateway killed.

One `enclave up` for the module, with a tiny model whose answer is long (about 800 tokens, a
few seconds), so a stream is reliably still running when the model is killed. Each test waits
for the stack to be whole again before it ends; every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclave.common.net import free_port
from enclave.model.tiny_gguf import write_tiny_gguf
from tests.e2e.conftest import read_lines, stack_env

pytestmark = pytest.mark.e2e

LONG_ANSWER = "".join(f" w{i:03d}" for i in range(800))


@dataclass
class Up:
    process: subprocess.Popen[str]
    output: list[str]
    data_dir: Path
    instance_url: str
    gateway_url: str
    model_url: str

    @property
    def token(self) -> str:
        return (self.data_dir / "admin-token.txt").read_text().strip()

    def events(self) -> list[dict[str, Any]]:
        path = self.data_dir / "logs" / "supervisor.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def pid(self, role: str) -> int:
        pids = [
            e["pid"]
            for e in self.events()
            if e.get("role") == role and e["event"] in ("role_started", "role_restarting")
        ]
        return int(pids[-1])

    def chat(self, content: str = "hi", timeout: float = 30) -> httpx.Response:
        return httpx.post(
            f"{self.instance_url}/api/v4/chat/completions",
            json={"content": content},
            headers={"PRIVATE-TOKEN": self.token},
            timeout=timeout,
        )


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    base = tmp_path_factory.mktemp("resilience")
    gguf = write_tiny_gguf(base / "long.gguf", LONG_ANSWER)
    data_dir = base / "data"
    instance_port, gateway_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "enclave", "up",
            "--instance-port", str(instance_port),
            "--gateway-port", str(gateway_port),
            "--gguf", str(gguf),
        ],
        env=stack_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
    output: list[str] = []

    def started() -> bool:
        assert process.poll() is None, "".join(output)
        while not lines.empty():
            output.append(lines.get())
        return any("Press Ctrl-C to stop" in line for line in output)

    try:
        wait_for(started, 180, "enclave up")
        text = "".join(output)
        model_url = re.search(r"model\s+(http://127\.0\.0\.1:\d+/v1)", text)
        assert model_url is not None, text
        yield Up(
            process,
            output,
            data_dir,
            f"http://127.0.0.1:{instance_port}",
            f"http://127.0.0.1:{gateway_port}",
            model_url.group(1),
        )
    finally:
        stopping = time.monotonic()
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    print(f"stopped {time.monotonic() - stopping:.1f} s after Ctrl-C")
    assert process.returncode == 0, "".join(output)


def _model_status(url: str, key: str) -> list[str]:
    body = httpx.get(url, timeout=10).json()
    return [m["status"] for m in body.get(key, [])]


def _ready(up: Up, expected: str) -> bool:
    gateway = _model_status(f"{up.gateway_url}/monitoring/ready", "models")
    instance = _model_status(f"{up.instance_url}/-/readiness", "model_check")
    return bool(gateway) and bool(instance) and set(gateway) == set(instance) == {expected}


def _events_of(up: Up, role: str, event: str) -> list[dict[str, Any]]:
    return [e for e in up.events() if e["event"] == event and e.get("role") == role]


def test_model_killed_mid_stream(up: Up) -> None:
    wait_for(lambda: _ready(up, "ok"), 30, "readiness to list the model as ok")
    others = (up.pid("instance"), up.pid("gateway"))
    access = httpx.post(
        f"{up.instance_url}/api/v4/ai/openai/direct_access",
        headers={"PRIVATE-TOKEN": up.token},
        timeout=30,
    ).json()
    model_pid = up.pid("model")

    frames: list[str] = []
    with httpx.stream(
        "POST",
        f"{access['base_url']}/chat/completions",
        json={"model": "duo_chat", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {access['token']}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                frames.append(line)
                break
        killed_at = time.monotonic()
        os.kill(model_pid, signal.SIGKILL)
        frames += [line for line in lines if line.startswith("data: ")]  # ends, never hangs
    ended_after = time.monotonic() - killed_at

    # The stream ends with OpenAI's error event, not a silent cut and not [DONE].
    assert "data: [DONE]" not in frames
    last = json.loads(frames[-1].removeprefix("data: "))
    assert last["error"]["code"] == "model_unavailable", last
    assert len(frames) < 700  # it really was cut mid-answer

    # During the outage both halves answer with their "model unavailable" errors.
    during = up.chat()
    assert during.status_code == 502, during.text
    assert "A1003" in during.text
    direct = httpx.post(
        f"{access['base_url']}/chat/completions",
        json={"model": "duo_chat", "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {access['token']}"},
        timeout=30,
    )
    # An OpenAI-API caller is a user: the one generic answer (the cause is in the log).
    assert direct.status_code == 503 and direct.json()["error"]["code"] == "model_unavailable"
    assert httpx.get(f"{up.gateway_url}/monitoring/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{up.instance_url}/-/liveness", timeout=5).status_code == 200

    # Readiness shows the model down, then up again once the supervisor restarted it.
    wait_for(lambda: _ready(up, "down"), 5, "readiness to show the model down")
    wait_for(lambda: bool(_events_of(up, "model", "role_restarted")), 40, "the model restart")
    restarted_after = time.monotonic() - killed_at
    wait_for(lambda: _ready(up, "ok"), 10, "readiness to show the model up")

    [exited] = _events_of(up, "model", "role_exited")
    assert (exited["exit_code"], exited["attempt"], exited["restart_in_s"]) == (-9, 1, 1.0)
    assert up.pid("model") != model_pid
    assert (up.pid("instance"), up.pid("gateway")) == others  # never restarted
    # Same port: the endpoint stored in the instance is still right, and answers.
    port = up.model_url.rsplit(":", 1)[1].split("/")[0]
    assert (up.data_dir / "model" / "port").read_text().strip() == port
    after = up.chat()
    assert after.status_code == 200, after.text
    assert "w000" in after.text
    print(
        f"stream ended {ended_after:.2f} s after the kill; model back after {restarted_after:.1f} s"
    )


def test_gateway_killed(up: Up) -> None:
    gateway_pid = up.pid("gateway")
    before = len(_events_of(up, "gateway", "role_restarted"))
    os.kill(gateway_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    during = up.chat(timeout=10)
    assert during.status_code == 502, during.text
    assert "A1001" in during.text  # cannot reach the AI gateway
    assert httpx.get(f"{up.instance_url}/-/liveness", timeout=5).status_code == 200

    wait_for(
        lambda: len(_events_of(up, "gateway", "role_restarted")) > before, 40, "gateway restart"
    )
    print(f"gateway back after {time.monotonic() - killed_at:.1f} s")
    assert up.pid("gateway") != gateway_pid
    exited = _events_of(up, "gateway", "role_exited")[-1]
    assert exited["exit_code"] == -9
    wait_for(lambda: up.chat().status_code == 200, 30, "a chat through the new gateway")


def test_model_killed_mid_stream_behind_the_instance(up: Up) -> None:
    # The instance's streams are raw text (GitLab's dialect has no error event): the client
    # must see a broken transfer, never a short answer that looks complete.
    wait_for(lambda: _ready(up, "ok"), 40, "readiness to list the model as ok")
    model_pid = up.pid("model")
    before = len(_events_of(up, "model", "role_restarted"))
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST",
            f"{up.instance_url}/api/v4/chat/completions",
            json={"content": "hi", "stream": True},
            headers={"PRIVATE-TOKEN": up.token},
            timeout=30,
        ) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_raw():
            if not received:
                os.kill(model_pid, signal.SIGKILL)
            received += chunk
    assert received.startswith(b" w000")
    wait_for(
        lambda: len(_events_of(up, "model", "role_restarted")) > before, 40, "the model restart"
    )
    wait_for(lambda: up.chat().status_code == 200, 30, "a chat once the model is back")


def test_instance_killed(up: Up) -> None:
    # The gateway keeps serving from what it holds in memory (keys, routes) while the
    # instance is away; the supervisor brings the instance back.
    access = httpx.post(
        f"{up.instance_url}/api/v4/ai/openai/direct_access",
        headers={"PRIVATE-TOKEN": up.token},
        timeout=30,
    ).json()
    wait_for(lambda: _ready(up, "ok"), 40, "the model to be up")
    instance_pid = up.pid("instance")
    before = len(_events_of(up, "instance", "role_restarted"))
    os.kill(instance_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{up.instance_url}/-/liveness", timeout=5)
    served = httpx.post(
        f"{access['base_url']}/completions",
        json={"model": "code_completions", "prompt": "def add(a, b):", "max_tokens": 3},
        headers={"Authorization": f"Bearer {access['token']}"},
        timeout=30,
    )
    assert served.status_code == 200, served.text
    wait_for(
        lambda: len(_events_of(up, "instance", "role_restarted")) > before, 40, "instance restart"
    )
    print(f"instance back after {time.monotonic() - killed_at:.1f} s")
    assert up.pid("instance") != instance_pid
    wait_for(lambda: up.chat().status_code == 200, 30, "a chat through the new instance")

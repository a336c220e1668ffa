"""EmbeddedModelServer: lifecycle, errors, hardening, signals, settings (all on loopback)."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from enclave.common.net import free_port, http_ok, wait_until
from enclave.config import EnclaveSettings, ModelSettings
from enclave.model import runner
from enclave.model import server as server_module
from enclave.model.server import EmbeddedModelServer, ModelServerError
from enclave.model.tiny_gguf import TINY_ANSWER, split_answer, write_tiny_gguf

from .helpers import TEST_API_KEY, call


def _server(gguf: Path, **kwargs: Any) -> EmbeddedModelServer:
    kwargs.setdefault("api_key", TEST_API_KEY)
    kwargs.setdefault("ctx_size", 256)
    return EmbeddedModelServer(gguf, **kwargs)


class _RecordingLog:
    """Stands in for the module's structlog logger: records (event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _record(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    info = warning = error = debug = _record


# Construction and errors --------------------------------------------------------------------
def test_api_key_is_required(tiny_gguf: Path) -> None:
    with pytest.raises(ValueError, match="API key"):
        EmbeddedModelServer(tiny_gguf, api_key="")


def test_missing_gguf_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ENCLAVE_MODEL__GGUF"):
        _server(tmp_path / "nope.gguf").start()


def test_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a model at all")
    with pytest.raises(ModelServerError, match="not a GGUF"):
        _server(path).start()


def test_port_in_use_is_explained(tiny_gguf: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ModelServerError, match=f"port {port} .*already in use"):
            _server(tiny_gguf, port=port).start()


def test_repr_hides_the_api_key(tiny_gguf: Path) -> None:
    assert TEST_API_KEY not in repr(_server(tiny_gguf))


# Lifecycle ------------------------------------------------------------------------------------
def test_start_stop_restart(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _RecordingLog()
    monkeypatch.setattr(server_module, "log", log)
    server = _server(tiny_gguf)
    assert not server.running
    assert not server.wait_ready(0.1)

    url = server.start()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", url)
    assert server.port > 0
    assert url == server.base_url
    assert server.start() == url  # idempotent
    assert server.wait_ready(30)
    reply = call(f"{url}/completions", {"prompt": "x", "max_tokens": 64})
    assert reply.json()["choices"][0]["text"] == TINY_ANSWER

    server.stop()
    server.stop()  # idempotent
    assert not server.running
    assert not http_ok(f"http://127.0.0.1:{urlport(url)}/health", timeout=1)

    with server:  # starts again
        assert server.wait_ready(30)
    assert not server.running

    events = [event for event, _ in log.events]
    assert events == ["model_starting", "model_started", "model_stopped"] * 2
    assert TEST_API_KEY not in repr(log.events)


def urlport(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_fixed_port(tiny_gguf: Path) -> None:
    port = free_port()
    with _server(tiny_gguf, port=port) as server:
        assert server.port == port
        assert server.base_url == f"http://127.0.0.1:{port}/v1"


def test_two_servers_in_one_process(tiny_gguf: Path, tmp_path: Path) -> None:
    other = write_tiny_gguf(tmp_path / "other.gguf", "SELECT 1;\n")
    with _server(tiny_gguf) as first, _server(other, served_name="other") as second:
        assert first.port != second.port
        one = call(f"{first.base_url}/completions", {"prompt": "", "max_tokens": 64})
        two = call(f"{second.base_url}/completions", {"prompt": "", "max_tokens": 64})
        assert one.json()["choices"][0]["text"] == TINY_ANSWER
        assert two.json()["choices"][0]["text"] == "SELECT 1;\n"
        assert two.json()["model"] == "other"


def test_parallel_slots_answer_concurrent_requests(tiny_gguf: Path) -> None:
    with _server(tiny_gguf, parallel=2) as server:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64}
        with ThreadPoolExecutor(4) as pool:
            replies = list(
                pool.map(lambda _: call(f"{server.base_url}/chat/completions", body), range(8))
            )
        assert {r.json()["choices"][0]["message"]["content"] for r in replies} == {TINY_ANSWER}


def test_default_max_tokens_applies_without_max_tokens(tmp_path: Path) -> None:
    answer = " ".join(f"word{i}" for i in range(20))
    gguf = write_tiny_gguf(tmp_path / "long.gguf", answer)
    with _server(gguf, n_predict=3) as server:
        reply = call(f"{server.base_url}/completions", {"prompt": "x"})
        choice = reply.json()["choices"][0]
        assert choice["text"] == "".join(split_answer(answer)[:3])
        assert choice["finish_reason"] == "length"
        # An explicit max_tokens wins.
        reply = call(f"{server.base_url}/completions", {"prompt": "x", "max_tokens": 64})
        assert reply.json()["choices"][0]["text"] == answer


# Hardening -----------------------------------------------------------------------------------
def test_slots_endpoint_is_off(tiny_server: EmbeddedModelServer) -> None:
    # It would show other users' prompts to any key holder.
    assert call(f"{tiny_server.root_url}/slots").status != 200


def test_metrics_need_the_key(tiny_server: EmbeddedModelServer) -> None:
    assert call(f"{tiny_server.root_url}/metrics", api_key=None).status == 401
    reply = call(f"{tiny_server.root_url}/metrics")
    assert reply.status == 200
    assert b"llamacpp:requests_processing" in reply.body


def test_settings_cannot_be_changed_over_http(tiny_server: EmbeddedModelServer) -> None:
    reply = call(f"{tiny_server.root_url}/props", {"n_predict": 1})
    assert reply.status != 200


def test_no_web_ui(tiny_server: EmbeddedModelServer) -> None:
    reply = call(f"{tiny_server.root_url}/", api_key=None)
    assert reply.status == 404
    assert b"<html" not in reply.body.lower()


def test_browsers_get_no_cors_grant(tiny_server: EmbeddedModelServer) -> None:
    origin = "http://evil.example"
    for method in ("GET", "OPTIONS"):
        reply = call(f"{tiny_server.base_url}/models", headers={"Origin": origin}, method=method)
        assert reply.headers.get("Access-Control-Allow-Origin", "") in ("", "null")


def test_listens_on_loopback_only(tiny_server: EmbeddedModelServer) -> None:
    assert tiny_server.root_url.startswith("http://127.0.0.1:")
    with socket.socket() as probe:
        probe.settimeout(2)
        probe.connect(("127.0.0.1", tiny_server.port))


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "127.0.0.1"),
        ("::", "[::1]"),
        ("::1", "[::1]"),
        ("localhost", "localhost"),
    ],
)
def test_connect_host(host: str, expected: str) -> None:
    assert server_module._connect_host(host) == expected


# Signals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_forever_stops_on_signal(tiny_gguf: Path, signum: int) -> None:
    before = signal.getsignal(signum)
    server = _server(tiny_gguf)
    answers: list[str] = []

    def client() -> None:
        # Wait for the server, use it once, then ask the process to stop.
        assert wait_until(lambda: server.running, timeout=60, interval=0.01)
        assert server.wait_ready(60)
        reply = call(f"{server.base_url}/completions", {"prompt": "x", "max_tokens": 64})
        answers.append(reply.json()["choices"][0]["text"])
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=client)
    thread.start()
    server.run_forever()
    thread.join(timeout=60)
    assert answers == [TINY_ANSWER]
    assert not server.running
    assert signal.getsignal(signum) is before


# Settings and the runner -------------------------------------------------------------------------
def test_from_settings(tiny_gguf: Path) -> None:
    settings = ModelSettings(
        host="127.0.0.1", port=0, served_name="coder", threads=1, ctx_size=256, parallel=2
    )
    server = EmbeddedModelServer.from_settings(settings, gguf=tiny_gguf, api_key=TEST_API_KEY)
    assert (server.served_name, server.threads, server.ctx_size, server.parallel) == (
        "coder",
        1,
        256,
        2,
    )
    with server:
        reply = call(f"{server.base_url}/models")
        assert [m["id"] for m in reply.json()["data"]] == ["coder"]


def _settings(tmp_path: Path, gguf: Path | None) -> EnclaveSettings:
    model = ModelSettings(gguf=gguf, threads=1, ctx_size=256)
    return EnclaveSettings(data_dir=tmp_path / "data", model=model)


def test_runner_builds_server_with_generated_key(tiny_gguf: Path, tmp_path: Path) -> None:
    settings = _settings(tmp_path, tiny_gguf)
    server = runner.build_server(settings)
    key = settings.model_api_key_file.read_text().strip()
    assert key.startswith("enclkey-")
    assert server.gguf == tiny_gguf
    with server:
        ok = call(f"{server.base_url}/completions", {"prompt": "", "max_tokens": 64}, api_key=key)
        assert ok.json()["choices"][0]["text"] == TINY_ANSWER
        assert call(f"{server.base_url}/models").status == 401  # the test key is not it


def test_runner_defaults_to_the_bundled_model_as_q8_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[Path, Path]] = []

    def fake_ensure_q8_0(source: Path, target_dir: Path) -> Path:
        seen.append((source, target_dir))
        return target_dir / "converted.gguf"

    monkeypatch.setattr(runner, "ensure_q8_0", fake_ensure_q8_0)
    settings = _settings(tmp_path, None)
    assert runner.resolve_gguf(settings) == settings.model_dir / "converted.gguf"
    assert seen == [(runner.bundled_gguf_path(), settings.model_dir)]


def test_run_model_exits_1_on_a_missing_gguf(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        runner.run_model(_settings(tmp_path, tmp_path / "missing.gguf"))
    assert info.value.code == 1


def test_nothing_listens_after_stop(tiny_gguf: Path) -> None:
    server = _server(tiny_gguf)
    url = server.start()
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/models", timeout=2)  # noqa: S310 - loopback

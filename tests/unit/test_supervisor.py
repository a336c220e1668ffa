"""The supervisor's restart policy (injected clock), its loop (real child processes) and the
embedded model's stable port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from enclave.common.net import free_port
from enclave.supervisor import (
    Plan,
    RestartPolicy,
    Role,
    choose_model_port,
    stop_all,
    supervise,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_the_cap() -> None:
    clock = Clock()
    policy = RestartPolicy(initial_s=1, cap_s=30, stable_s=60, max_attempts=10, clock=clock)
    delays = []
    for _ in range(8):
        started = clock.now
        clock.now += 0.5  # crashes half a second after each start
        delay = policy.on_exit(started)
        assert delay is not None
        delays.append(delay)
        clock.now += delay
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]


def test_a_stable_run_resets_the_backoff() -> None:
    clock = Clock()
    policy = RestartPolicy(initial_s=1, cap_s=30, stable_s=60, clock=clock)
    for expected in (1, 2, 4):
        started = clock.now
        clock.now += 1
        assert policy.on_exit(started) == expected
    started = clock.now
    clock.now += 60  # ran for the stable period: the next crash is a first crash again
    assert policy.on_exit(started) == 1
    assert policy.attempt == 1


def test_it_gives_up_after_max_attempts_in_a_row() -> None:
    clock = Clock()
    policy = RestartPolicy(initial_s=1, cap_s=30, stable_s=60, max_attempts=3, clock=clock)
    results = []
    for _ in range(4):
        started = clock.now
        clock.now += 2
        results.append(policy.on_exit(started))
    assert results == [1, 2, 4, None]


# -- the loop, with real processes ----------------------------------------------------------

SERVE = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


class _Served(Role):
    """A role that runs a tiny HTTP server script instead of ``python -m enclave``."""

    def start(self, log_dir: Path, base_env: dict[str, str]) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-c", *self.args], stdin=subprocess.DEVNULL
        )


def _served(name: str, port: int) -> Role:
    return _Served(name, [SERVE, str(port)], f"http://127.0.0.1:{port}/")


def _wait(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_killed_role_is_restarted_on_its_port_and_the_others_keep_running(
    tmp_path: Path,
) -> None:
    ports = [free_port() for _ in range(3)]
    model, instance, gateway = (_served(n, p) for n, p in zip(("m", "i", "g"), ports, strict=True))
    plan = Plan(model, instance, gateway, "", "", "")
    events: list[tuple[str, dict[str, Any]]] = []
    for role in plan.roles:
        role.start(tmp_path, {})
    _wait(lambda: all(_listening(p) for p in ports))
    first_pid = model.pid
    other_pids = (instance.pid, gateway.pid)

    def on_event(event: str, fields: dict[str, Any]) -> None:
        events.append((event, fields))
        if event == "role_restarted":
            raise _Stop

    assert model.process is not None
    model.process.kill()
    policy = lambda: RestartPolicy(initial_s=0.1, cap_s=1.0)  # noqa: E731
    try:
        with pytest.raises(_Stop):
            supervise(plan, tmp_path, on_event, env={}, policy_factory=policy, poll_s=0.05)
    finally:
        stop_all(plan)
    names = [event for event, _ in events]
    assert names == ["role_exited", "role_restarting", "role_restarted"]
    exited = events[0][1]
    assert exited["role"] == "m" and exited["exit_code"] == -9 and exited["attempt"] == 1
    assert exited["restart_in_s"] == 0.1
    assert events[2][1]["pid"] != first_pid
    assert (instance.pid, gateway.pid) == other_pids  # untouched


def test_a_role_that_keeps_crashing_is_given_up(tmp_path: Path) -> None:
    class _Crashing(Role):
        def start(self, log_dir: Path, base_env: dict[str, str]) -> None:
            self.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    role = _Crashing("crash", [], "http://127.0.0.1:9/")
    others = [_served("i", free_port()), _served("g", free_port())]
    plan = Plan(role, others[0], others[1], "", "", "")
    for item in plan.roles:
        item.start(tmp_path, {})
    events: list[tuple[str, dict[str, Any]]] = []

    def policy() -> RestartPolicy:
        return RestartPolicy(initial_s=0.01, cap_s=0.02, max_attempts=3)

    try:
        gave_up = supervise(
            plan, tmp_path, lambda e, f: events.append((e, f)), {}, policy, poll_s=0.02
        )
    finally:
        stop_all(plan)
    assert gave_up is role
    assert [e for e, _ in events].count("role_exited") == 3
    assert events[-1] == ("role_gave_up", {"role": "crash", "exit_code": 3, "attempt": 4})


class _Stop(Exception):
    pass


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- the model's port -----------------------------------------------------------------------


def test_the_model_port_is_recorded_and_reused_when_free(tmp_path: Path) -> None:
    record = tmp_path / "model" / "port"
    first = choose_model_port(record)
    assert record.read_text().strip() == str(first)
    assert choose_model_port(record) == first


def test_a_taken_recorded_port_is_replaced(tmp_path: Path) -> None:
    record = tmp_path / "port"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        record.write_text(f"{taken}\n")
        chosen = choose_model_port(record)
    assert chosen != taken
    assert record.read_text().strip() == str(chosen)


def test_an_explicit_port_wins(tmp_path: Path) -> None:
    record = tmp_path / "port"
    record.write_text("12345\n")
    assert choose_model_port(record, 23456) == 23456
    assert record.read_text().strip() == "23456"

"""The socket guard itself (tests/network_guard.py): run on a small suite in a child pytest.

A blocked connection must raise where it happens, in the test process and in a process the
test starts, and fail the run even though the tests caught the error; loopback, numeric hosts
and offline name lookups must behave as on an air-gapped machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]

SUITE: Final = """
import socket, subprocess, sys
import pytest

def test_connect_beyond_loopback_raises():
    with pytest.raises(PermissionError, match="network guard: connect to 10.255.255.1:9"):
        socket.create_connection(("10.255.255.1", 9), timeout=1)

def test_a_child_process_is_guarded_too():
    code = (
        "import socket\\n"
        "try:\\n socket.create_connection(('192.0.2.1', 80), timeout=1)\\n"
        "except PermissionError as e: print('blocked:', e)\\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "blocked: network guard" in out

def test_numeric_hosts_resolve_locally_and_names_are_unknown():
    assert socket.getaddrinfo("2852039166", 80)[0][4][0] == "169.254.169.254"
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("models.example", 80)

def test_loopback_works():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    socket.create_connection(("localhost", port), timeout=5).close()
    server.close()
"""


def test_blocked_connections_fail_the_run_and_are_listed(tmp_path: Path) -> None:
    suite = tmp_path / "test_guarded.py"
    suite.write_text(SUITE)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.network_guard",
            "--rootdir",
            str(tmp_path),
            str(suite),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    # Every test passed (each caught its error), and still the run fails.
    assert "4 passed" in output, output
    assert result.returncode == 1, output
    assert "network guard: 2 non-loopback attempts blocked" in output
    assert "1 DNS names answered 'unknown'" in output
    assert "blocked connect to 10.255.255.1:9 (pid" in output
    assert "test_connect_beyond_loopback_raises" in output
    assert "blocked connect to 192.0.2.1:80" in output

"""The end-to-end core passes inside a network namespace that has nothing but loopback.

``unshare -n`` gives the run a fresh network stack: no interface but ``lo``, no route, no DNS
server reachable. The native code (llama.cpp) is boxed in as well as Python, which the socket
guard (tests/network_guard.py) cannot see into. The core: bring-up, code completion (PAT and
streamed), chat, direct access from an IDE, the OpenAI client, and the per-socket check that
every connection of every role is loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import pytest

from tests.summary_lines import record_summary

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sys.platform != "linux", reason="network namespaces are Linux only"),
]

REPO: Final = Path(__file__).resolve().parents[2]
CORE: Final = (
    "tests/e2e/test_code_completion.py",
    "tests/e2e/test_features.py::test_duo_chat",
    "tests/e2e/test_features.py::test_duo_chat_streamed",
    "tests/e2e/test_direct_access.py",
    "tests/e2e/test_openai_client.py",
    "tests/e2e/test_no_outbound.py",
)
INNER_TIMEOUT_S: Final = 270  # under the suite's 300 s per-test limit

# Inside the namespace: bring loopback up, show there is nothing else, prove that the outside
# is unreachable (no route at all), then run the suite.
SCRIPT: Final = """
set -e
ip link set lo up
echo "links: $(ip -o link show | awk -F': ' '{print $2}' | tr '\\n' ' ')"
if ip route get 192.0.2.1 >/dev/null 2>&1; then echo "route: present"; else echo "route: none"; fi
exec "$@"
"""


def namespace_problem() -> str | None:
    """Why a loopback-only namespace cannot be made here, or None when it can."""
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux / iproute2)"
    probe = subprocess.run(
        ["unshare", "-n", "true"], capture_output=True, text=True, timeout=30, check=False
    )
    if probe.returncode != 0:
        return f"unshare -n is not permitted here: {probe.stderr.strip() or probe.returncode}"
    return None


def test_end_to_end_core_passes_with_only_loopback() -> None:
    problem = namespace_problem()
    if problem is not None:
        pytest.skip(problem)
    started = time.monotonic()
    command = [
        "unshare",
        "-n",
        "sh",
        "-c",
        SCRIPT,
        "airgap",
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *CORE,
    ]
    result = subprocess.run(
        command,
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=INNER_TIMEOUT_S,
        check=False,
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    links = re.search(r"^links: (.*)$", output, re.M)
    assert links is not None and links.group(1).split() == ["lo"], output[:2000]
    assert "route: none" in output, "the namespace has a route out"
    passed = re.search(r"(\d+) passed", output)
    assert passed is not None, output[-2000:]
    assert "network guard: 0 non-loopback attempts blocked" in output
    record_summary(
        f"no-network run: {passed.group(1)} end-to-end tests passed in a network namespace "
        f"with only loopback (unshare -n; no route out) in {elapsed:.0f} s"
    )

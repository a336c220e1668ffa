"""The multi-process test's cluster (``cluster.py``) and its one summary line.

The tests record what they measured in :data:`SUMMARY`; the end of the run prints it as one
line (``scale-out: ...``), as the security suite prints its count.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from enclave.model.tiny_gguf import write_tiny_gguf
from tests.multiprocess.cluster import Cluster, running_cluster, scale_out_wanted

SUMMARY: dict[str, str] = {}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    wanted, reason = scale_out_wanted()
    if not wanted:
        pytest.skip(reason)
    gguf = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    with running_cluster(gguf) as running:
        yield running


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    if not SUMMARY:
        return
    failed = any(
        "tests/multiprocess/" in report.nodeid
        for report in terminalreporter.stats.get("failed", [])
    )
    line = "scale-out (2 instances + 2 gateways x 2 workers, nginx, PostgreSQL, Redis): " + (
        "; ".join(f"{key} {value}" for key, value in SUMMARY.items())
    )
    terminalreporter.write_line(line, bold=True, red=failed, green=not failed)


__all__ = ["SUMMARY", "cluster"]

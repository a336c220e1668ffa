"""pytest plugin: one summary line per proof (no-network run, soak, fuzzers), printed at the end
of the run the way tests/security prints its attack count. Loaded from the root conftest."""

from __future__ import annotations

import pytest

_LINES: list[str] = []


def record_summary(line: str) -> None:
    """Print ``line`` in the run's terminal summary (call it once a proof has passed)."""
    _LINES.append(line)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    for line in _LINES:
        terminalreporter.write_line(line, bold=True, green=True)

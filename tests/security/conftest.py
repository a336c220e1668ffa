"""The security suite reuses the gateway test fakes and fixtures (tests/unit/gateway).

It prints how many attack cases passed at the end of the run (``security attack cases: N
passed``), and how many property tests of the token parser did.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "gateway"))

from gateway_fixtures import (
    anyio_backend,
    gateway_key_file,
    gw,
    keys,
    make_harness,
)

__all__ = ["anyio_backend", "gateway_key_file", "gw", "keys", "make_harness"]

# Every module named test_security_attacks*.py (gateway here, instance/ beside it) counts.
ATTACK_MODULE = "/test_security_attacks"
PROPERTY_MODULE = "test_security_token_properties.py"


def _count(terminalreporter: pytest.TerminalReporter, outcome: str, module: str) -> int:
    return sum(
        1
        for report in terminalreporter.stats.get(outcome, [])
        if getattr(report, "when", None) == "call" and module in report.nodeid.split("::", 1)[0]
    )


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    for label, module in (
        ("security attack cases", ATTACK_MODULE),
        ("token parser property tests", PROPERTY_MODULE),
    ):
        passed = _count(terminalreporter, "passed", module)
        failed = _count(terminalreporter, "failed", module)
        if passed or failed:
            line = f"{label}: {passed} passed" + (f", {failed} failed" if failed else "")
            terminalreporter.write_line(line, bold=True, red=bool(failed), green=not failed)

"""One summary line per fuzzer: how many hostile inputs ran, and how many tests failed."""

from __future__ import annotations

import pytest

from tests.fuzz.summary import EXAMPLES, status_text

# Summary label -> (test module, counter key).
FUZZERS = {
    "hypothesis fuzz, stream parsers": ("test_fuzz_stream_parsers.py", "stream parsers"),
    "hypothesis fuzz, HTTP/1.1 client": ("test_fuzz_http1.py", "http1 client"),
    "hypothesis fuzz, prompt rendering": ("test_fuzz_prompts.py", "prompt rendering"),
    "schemathesis, gateway API": ("test_fuzz_api.py", "gateway API"),
    "schemathesis, instance API": ("test_fuzz_api.py", "instance API"),
}


def _failed(terminalreporter: pytest.TerminalReporter, module: str) -> int:
    return sum(
        1
        for report in terminalreporter.stats.get("failed", [])
        if report.nodeid.split("::", 1)[0].endswith(module)
    )


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    for label, (module, key) in FUZZERS.items():
        failed = _failed(terminalreporter, module)
        if not EXAMPLES[key] and not failed:
            continue
        line = (
            f"{label}: {EXAMPLES[key]} hostile inputs{status_text(key)}, "
            f"{'no 500' if label.startswith('schemathesis') else 'no crash'}, no hang, "
            "every error with a message"
            if not failed
            else f"{label}: {EXAMPLES[key]} inputs, {failed} tests failed"
        )
        terminalreporter.write_line(line, bold=True, red=bool(failed), green=not failed)

"""pytest plugin: the whole test run may reach loopback only (issue 15, air-gapped proof).

Loaded from the root ``conftest.py``. At start it installs the socket guard
(``tests/netguard/enclave_netguard.py``) in the pytest process and, through ``PYTHONPATH`` and
``NETGUARD_REPORT_DIR`` in the environment every test inherits, in every Python process the
tests start (``tests/netguard/sitecustomize.py``). A blocked connection raises where it
happens; at the end one summary line counts them (and the processes guarded, and the DNS names
answered "unknown" as offline), and any blocked connection fails the run even when the code
under test swallowed the error.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

GUARD_DIR = Path(__file__).resolve().parent / "netguard"
sys.path.insert(0, str(GUARD_DIR))

import enclave_netguard  # noqa: E402  (lives in GUARD_DIR, which is not a package)

_REPORT_KEY = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    report_dir = Path(tempfile.mkdtemp(prefix="netguard-"))
    config.stash[_REPORT_KEY] = report_dir
    os.environ[enclave_netguard.REPORT_DIR_ENV] = str(report_dir)
    paths = [str(GUARD_DIR), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    enclave_netguard.install()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[Any]:
    enclave_netguard.set_where(item.nodeid)
    try:
        return (yield)
    finally:
        enclave_netguard.set_where("")


def _read_reports(report_dir: Path) -> tuple[int, int, list[dict[str, Any]]]:
    """(guarded child processes, names answered offline, blocked attempts) from every
    process's report file."""
    guarded: set[int] = set()
    lookups = 0
    blocked: list[dict[str, Any]] = []
    for path in report_dir.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("kind") == "guarded":
                guarded.add(int(entry["pid"]))
            elif entry.get("kind") == enclave_netguard.LOOKUP:
                lookups += 1
            else:
                blocked.append(entry)
    return len(guarded - {os.getpid()}), lookups, blocked


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    report_dir = session.config.stash.get(_REPORT_KEY, None)
    if report_dir is None:
        return
    children, lookups, blocked = _read_reports(report_dir)
    # The pytest process reports in a file of its own too (with the test's node id).
    session.config.stash[_SUMMARY_KEY] = (children, lookups, blocked)
    shutil.rmtree(report_dir, ignore_errors=True)
    if blocked and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_SUMMARY_KEY = pytest.StashKey[tuple[int, int, list[dict[str, Any]]]]()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    children, lookups, blocked = config.stash.get(_SUMMARY_KEY, (0, 0, []))
    line = (
        f"network guard: {len(blocked)} non-loopback attempts blocked; "
        f"{enclave_netguard.allowed_count()} loopback connections in the test process, "
        f"{children} child processes guarded; {lookups} DNS names answered 'unknown' "
        "without asking a server"
    )
    terminalreporter.write_line(line, bold=True, red=bool(blocked), green=not blocked)
    for entry in blocked[:20]:
        who = entry.get("where") or " ".join(entry.get("argv") or [])
        text = f"  blocked {entry['kind']} to {entry['target']} (pid {entry['pid']}: {who})"
        terminalreporter.write_line(text, red=True)

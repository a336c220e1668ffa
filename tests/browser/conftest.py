"""Browser fixtures: Debian's chromium driven by Playwright, and a real stack to drive it at.

The browser is ``/usr/bin/chromium`` from the distribution (the test services script installs
it); Playwright never downloads one. Without it the browser tests are skipped with the reason.
The stack is the real one (instance, gateway, embedded llama.cpp with the tiny model) with a
1 s routes refresh, so a revoked editor key is refused within seconds, and usage written to the
database every second.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.e2e.conftest import Stack, running_stack, tiny_gguf

__all__ = ["tiny_gguf"]  # fixture

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROUTES_REFRESH_S = 1.0
# Where the run writes the screenshots the README shows.
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
VIEWPORT = {"width": 1100, "height": 720}


@pytest.fixture(scope="module")
def web_stack(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("enclave-web"),
        tiny_gguf,
        ENCLAVE_GATEWAY__ROUTES_REFRESH_S=str(ROUTES_REFRESH_S),
        ENCLAVE_INSTANCE__USAGE_FLUSH_S="1",
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip(
            "/usr/bin/chromium is not installed: run scripts/install-test-services.sh (Debian's "
            "chromium package) to run the browser tests"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
